"""Quantization: the LSQ quantizer and its C++ kernel (`lsq`), the integer arithmetic of
evaluation and deployment (`requant`), and the `Precision` value (`precision`)."""
