"""The report answers what a user asks first: which images each accuracy is on, what the speed
ratio is and at how many threads, what each size is, and a recommended family of three."""
import json
import os

from oqat.run.report import markdown


def test_the_report_names_images_ratio_threads_and_sizes(tiny_mixed_run):
    r = json.load(open(os.path.join(tiny_mixed_run, "results.json")))
    fact = next(iter(next(iter(r["export"].values())).values()))
    fact["speed"] = {"threads": 1, "batches": {"1": {"onnxruntime fp32": 1.0, "oqat export": 2.0}}}
    text = markdown(r)
    assert text.count("Val top-1 on 64 held-out training images, test top-1 on the whole test split.") == 2
    assert f"| {fact['test']['n']:,} images: " in text and "the tables above use the whole test split" in text
    assert "| 0.50x |" in text and "below 1 the export is slower" in text
    fact["machine"] = "AMD EPYC, AVX2, 2 CPUs, torch 2.14.1 (kernels AVX2, 2 threads)"
    assert "Speed measured with 1 thread(s) on AMD EPYC, AVX2, 2 CPUs;" in markdown(r)
    assert ".onnx is model.onnx" in text and "packed is weights.oqpk" in text
    assert "Size: the weights at their bits" in text
    members = [m for m in r["recommended"].values() if m]
    assert len({(m["bits"], m["arch"]) for m in members}) == len(members)
    assert [m["bitops"] for m in members] == sorted({m["bitops"] for m in members})
