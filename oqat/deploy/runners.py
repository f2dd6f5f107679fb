"""Running an export on the CPU (oqat's own runtime, OpenVINO, onnxruntime), how closely it
follows PyTorch, and how fast it runs against the same network in full precision.

oqat's runtime (`oqat/runtime`, a C library built at set-up) runs the network's own file
(model.oqrt) on its integer codes at their bit width: the fast runtime where it is built.
OpenVINO runs the integer ONNX graph's convolutions in int8; onnxruntime computes the same
codes in float and is the reference (docs/deployment.md has the measurements). OpenVINO is an
optional dependency (`pip install oqat[openvino]`); `runtimes()` says which are here.
"""
import copy
import functools
import importlib.util
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from ..files.layout import ExportLayout
from ..files.records import read_facts
from ..runtime import Model, RuntimeUnavailable, binding
from .preprocess import Preprocess

ONNX_RUNTIMES = ("openvino", "onnxruntime")  # the runtimes of the ONNX graph, preferred first
RUNTIMES = ("oqat", *ONNX_RUNTIMES)  # every runtime of an export, preferred first
SUB_BYTE = {TensorProto.INT2, TensorProto.INT4, TensorProto.UINT2, TensorProto.UINT4}


@functools.cache
def oqat_runtime_error() -> str | None:
    """Why oqat's runtime cannot run here (no C compiler, not built), or None when it can."""
    try:
        binding.library()
    except RuntimeUnavailable as err:
        return str(err).splitlines()[0]
    return None


def runtimes() -> list[str]:
    """The runtimes installed here, preferred first."""
    return (["oqat"] if oqat_runtime_error() is None else []) + onnx_runtimes()


def onnx_runtimes() -> list[str]:
    """The runtimes of the ONNX graph installed here, preferred first."""
    return [r for r in ONNX_RUNTIMES if importlib.util.find_spec(r) is not None]


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


def _model_source(model, runtime: str):
    """What `runtime` reads of `model`: an export folder's file for it, or `model` as given."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str) and os.path.isdir(model):
        layout = ExportLayout(model)
        path = layout.runtime if runtime == "oqat" else layout.onnx
        if not os.path.isfile(path):
            raise ValueError(f"export folder '{model}' has no {os.path.basename(path)} for runtime '{runtime}'")
        return path
    if isinstance(model, str) and not os.path.isfile(model):
        raise ValueError(f"model file '{model}' not found")
    if runtime == "oqat" and isinstance(model, onnx.ModelProto):
        raise ValueError("runtime 'oqat' runs its own model file (model.oqrt), not an ONNX graph")
    if runtime != "oqat" and isinstance(model, bytes):
        raise ValueError(f"runtime '{runtime}' runs an ONNX graph, not bytes")
    return model


class Runner:
    """One exported network compiled for one runtime on the CPU; call it on a float32 NCHW batch.

    `model`: an export folder (each runtime takes its file from it), or for "oqat" a model.oqrt
    path or its bytes, for the ONNX runtimes an ONNX model or .onnx path. `runtime`: one of
    RUNTIMES, default the fastest here that reads `model`. From an export folder it also knows
    the images it takes and its classes (`classify`)."""

    def __init__(self, model, runtime: str | None = None, threads: int | None = None):
        self.preprocess, self.classes = _folder_facts(model)
        if runtime is None:
            graph = isinstance(model, onnx.ModelProto) or str(model).endswith(".onnx")
            runtime = next((r for r in runtimes() if not (graph and r == "oqat")), "onnxruntime")
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
        if runtime == "oqat" and oqat_runtime_error() is not None:
            raise ValueError(f"runtime 'oqat' is not built here: {oqat_runtime_error()}")
        if runtime != "oqat" and runtime not in onnx_runtimes():
            raise ValueError(f"runtime '{runtime}' is not installed: pip install oqat[{runtime}]")
        self.runtime = runtime
        model = _model_source(model, runtime)
        if runtime == "oqat":
            m = Model(model, threads) if isinstance(model, str) else Model(data=model, threads=threads)
            self.input_shape, self._run = m.input_shape, m
            return
        if isinstance(model, str):
            model = onnx.load(model)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
        self.input_shape = tuple(dims) if len(dims) == 3 and all(dims) else None  # None: a graph of other inputs
        if runtime == "onnxruntime":
            import onnxruntime as ort
            opts = ort.SessionOptions()
            # onnxruntime's QDQ rewrites fuse none of this graph's convs (an activation sits between
            # conv and Q) and keep every weight DQ live, 3x slower; its bias quantization rounds
            # the folded BN shift to int32 steps. Without them it folds the weights once.
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            if threads:
                opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            # Its conv fusions fold the epilogue's Mul and Add into the conv's weights and bias,
            # which then sums floats that are no longer integers: codes flipped on 5 of the
            # demo's 10,000 test images (4-bit L). Without them it computes oqat's rule exactly.
            self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                                 disabled_optimizers=["ConvMulFusion", "ConvAddFusion"])
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
        """Logits of x: float32 N x C x H x W, normalised as the network was trained."""
        if isinstance(x, torch.Tensor):
            x = x.detach().float().contiguous().numpy()
        x = np.asarray(x)
        if x.dtype.kind not in "f":
            raise ValueError(f"input must be float images normalised as the model card says, got dtype {x.dtype} "
                             "(raw pixels? see `oqat predict`)")
        if self.input_shape and (x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or len(x) == 0):
            raise ValueError(f"input must be N x {' x '.join(map(str, self.input_shape))} (N >= 1), got "
                             f"{' x '.join(map(str, x.shape))}")
        return self._run(np.ascontiguousarray(x, dtype=np.float32))

    def logits(self, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
        """Logits of a (normalised, resized) batch, `batch` images at a time."""
        return torch.from_numpy(np.concatenate([self(x[i:i + batch]) for i in range(0, len(x), batch)]))

    def classify(self, images: list, top: int = 5) -> list[list[tuple[str, float]]]:
        """For each image (a file path or a PIL image), its `top` classes with their
        probabilities, most likely first: the export folder's preprocessing and class names."""
        if self.preprocess is None:
            raise ValueError("this export folder's facts.json does not say how its images are preprocessed "
                             "(exported without data: give `oqat export` the run's data)")
        logits = torch.from_numpy(self(self.preprocess(images))).double()
        probs, idx = logits.softmax(1).topk(min(top, logits.shape[1]), dim=1)
        names = self.classes or [str(i) for i in range(logits.shape[1])]
        return [[(names[i], p) for i, p in zip(row_i.tolist(), row_p.tolist())] for row_i, row_p in zip(idx, probs)]


def _folder_facts(model) -> tuple[Preprocess | None, list[str] | None]:
    """(preprocessing, class names) of an export folder's facts.json; (None, None) otherwise."""
    path = ExportLayout(os.fspath(model)).facts if isinstance(model, (str, os.PathLike)) else None
    if path is None or not os.path.isfile(path):
        return None, None
    facts = read_facts(path)
    spec = facts.get("preprocess")
    return (Preprocess.from_dict(spec, path) if spec else None), facts.get("classes")


def export_runners(graph: onnx.ModelProto, runtime_model: bytes | str | None, threads: int | None = None,
                   kind: str = "export") -> dict[str, Runner]:
    """"<runtime> <kind>" -> Runner of one network in every runtime here: the ONNX runtimes run
    `graph`; oqat's runs `runtime_model` (its model.oqrt, path or bytes) when given."""
    out = {}
    for r in runtimes():
        if r != "oqat":
            out[f"{r} {kind}"] = Runner(graph, r, threads)
        elif runtime_model is not None:
            out[f"{r} {kind}"] = Runner(runtime_model, r, threads)
    return out


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


def speed(runners: dict[str, Callable], shape: tuple[int, ...], batches=(1, 16), threads: int = 1,
          rounds: int = 5, calls: int = 2) -> dict:
    """{"threads", "batches": {batch: {name: ms}}} of each runner (named "<runtime> <kind>", e.g.
    "openvino fp32", "oqat export"), timed interleaved on random (N, *shape) inputs."""
    out = {"threads": threads, "batches": {}}
    for b in batches:
        x = np.random.default_rng(b).standard_normal((b, *shape), dtype=np.float32)
        out["batches"][b] = interleaved_ms(runners, dict.fromkeys(runners, x), rounds, calls)
    return out
