"""Deployment: the integer ONNX, QONNX, packed and runtime export (`export`), running an export
in oqat's runtime, onnxruntime or OpenVINO (`runners`), latency (`latency`), and an image file
to a network's input (`preprocess`)."""
