"""Running an exported graph on the CPU (onnxruntime, OpenVINO), how closely it follows
PyTorch, and how fast it runs against the same network in full precision.

OpenVINO runs the integer graph's convolutions in int8 (its low-precision transformations
turn each QDQ conv into one); onnxruntime fuses none of them (an activation sits between each
conv and the next quantizer, where its QDQ fusion wants Q right after the conv) and computes
the same codes in float. So OpenVINO is the fast runtime for an export and onnxruntime the
reference (docs/deployment.md has the measurements). OpenVINO is an optional dependency
(`pip install oqat[openvino]`); `runtimes()` says which are here.
"""
import copy
import importlib.util
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

RUNTIMES = ("openvino", "onnxruntime")  # the preferred runtime for an export first
SUB_BYTE = {TensorProto.INT2, TensorProto.INT4, TensorProto.UINT2, TensorProto.UINT4}


def runtimes() -> list[str]:
    """The runtimes installed here, preferred first."""
    return [r for r in RUNTIMES if importlib.util.find_spec(r) is not None]


def widened(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its sub-byte initializers (INT2, INT4) widened to INT8 at opset 17: the
    same graph for runtimes that read no sub-byte types (OpenVINO reads no INT2), or that
    decompress them at every run (OpenVINO's INT4 path is for matmuls: 1.6x slower here)."""
    if not any(t.data_type in SUB_BYTE for t in model.graph.initializer):
        return model
    out = copy.deepcopy(model)
    for t in out.graph.initializer:
        if t.data_type in SUB_BYTE:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.int8), t.name))
    for op in out.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 17  # every op the export writes means the same from 17 on
    out.ir_version = 8
    return out


class Runner:
    """One model compiled for one runtime on the CPU; call it on a float32 NCHW batch."""

    def __init__(self, model: "onnx.ModelProto | str", runtime: str = "onnxruntime", threads: int | None = None):
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
        if runtime not in runtimes():
            raise ValueError(f"runtime '{runtime}' is not installed: pip install oqat[{runtime}]")
        self.runtime = runtime
        if isinstance(model, str):
            model = onnx.load(model)
        if runtime == "onnxruntime":
            import onnxruntime as ort
            opts = ort.SessionOptions()
            # onnxruntime's QDQ rewrites fuse none of this graph's convs (an activation sits between
            # conv and Q) and keep every weight DQ live, 3x slower; its bias quantization rounds
            # the folded BN shift to int32 steps. Without them it folds the weights once.
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            if threads:
                opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            first = self._session.get_outputs()[0].name  # the model's own output; tests may add more
            self._run = lambda x: self._session.run([first], {"input": x})[0]
        else:
            import openvino as ov
            core = ov.Core()
            # f32 hint: on CPUs with bf16 units OpenVINO would otherwise run float layers in bf16
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = core.compile_model(core.read_model(widened(model).SerializeToString(), b""), "CPU", config)
            request = compiled.create_infer_request()
            self._run = lambda x: request.infer({0: x}, share_inputs=True)[0].copy()

    def __call__(self, x: "np.ndarray | torch.Tensor") -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().float().contiguous().numpy()
        return self._run(np.ascontiguousarray(x, dtype=np.float32))

    def logits(self, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
        """Logits of a (normalised, resized) batch, `batch` images at a time."""
        return torch.from_numpy(np.concatenate([self(x[i:i + batch]) for i in range(0, len(x), batch)]))


def parity(net: torch.nn.Module, runner: Runner, x: torch.Tensor) -> dict:
    """How closely a runtime follows PyTorch on inputs x: top-1 agreement (fraction), and
    per image the largest logit difference as a fraction of the logits' range (`gaps`)."""
    channels_last = net.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = net.eval()(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    out = runner.logits(x)
    gaps = (out - ref).abs().max(1).values / (ref.max() - ref.min()).clamp_min(1e-12)
    return {"n": len(x), "runtime": runner.runtime,
            "top1_agreement": (out.argmax(1) == ref.argmax(1)).float().mean().item(),
            "max_gap": gaps.max().item(), "within_1e-3": (gaps <= 1e-3).float().mean().item(),
            "gaps": gaps, "torch_logits": ref, "runtime_logits": out}


def median_ms(fn: Callable[[], object], runs: int, warmup: int) -> float:
    """Median wall time of fn() in milliseconds over `runs` calls, after `warmup` calls."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def interleaved_ms(fns: dict[str, Callable], inputs: dict[str, object], rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each fns[name](inputs[name]), the fns taking turns `calls` calls
    at a time for `rounds` rounds after one warm-up call each: a drift of the machine's speed
    (another process, a clock change) hits every fn alike, so their ratios hold."""
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        fn(inputs[name])
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                start = time.perf_counter()
                fn(inputs[name])
                times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}


def speed(models: dict[str, onnx.ModelProto], shape: tuple[int, ...], batches=(1, 16), threads: int = 1,
          rounds: int = 5, calls: int = 2) -> dict:
    """{"threads", "batches": {batch: {"<runtime> <kind>": ms}}} of each model (by kind, e.g.
    "fp32" and "export") in each runtime here, timed interleaved on random (N, *shape) inputs."""
    fns = {f"{r} {kind}": Runner(m, r, threads) for kind, m in models.items() for r in runtimes()}
    out = {"threads": threads, "batches": {}}
    for b in batches:
        x = np.random.default_rng(b).standard_normal((b, *shape), dtype=np.float32)
        out["batches"][b] = interleaved_ms(fns, dict.fromkeys(fns, x), rounds, calls)
    return out
