"""Deployable export of one subnet: an integer-arithmetic ONNX graph, QONNX, packed weights, a card.

The graphs are written with `onnx.helper` straight from the static `Subnet`, not traced:
every op is chosen, so that the integer graph computes oqat's one arithmetic rule
(`oqat.quant.requant`) and any runtime that follows it gives PyTorch's codes. A quantized conv
(weight and input each at b bits, steps s_w and s_a) and the BN after it become

    x -> Div(|s_a|) -> Clip[Qn, Qp] -> Round -> QuantizeLinear(1) -> DequantizeLinear(1) -> Conv
    weight codes (INT2/INT4/INT8) -> DequantizeLinear(1) -----------------------------------^
    Conv -> Mul(scale_c) -> Add(shift_c) -> act

The conv sums integer-valued floats (exact), the folded BN scale and shift follow as two
float32 operations, and the QDQ pair at scale 1 is what integer runtimes (OpenVINO) turn into
an integer convolution. Weight codes are stored at their true width: INT4 up to 4 bits (ONNX
opset 21) and INT2 at 1-2 bits (opset 25). The stem, SE, pooling and classifier sum in
float64 (Cast, MatMul, Gemm, ReduceSum) and round once. Input: the normalised image batch at
the architecture's resolution (N x C x r x r, N dynamic); output: logits.

The QONNX graph (`build_qonnx`) is the format Brevitas writes and FINN and hls4ml read:
a `Quant` node at the real bit-width on every quantized conv's weight and input, BN as is.

onnxruntime follows the rule operation by operation and gives PyTorch's codes; OpenVINO
computes its own int8 arithmetic (docs/deployment.md measures it). oqat's runtime reads its
own file (`oqat.runtime.model_file`), which `export` writes beside these.
"""
import copy
import os

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..core import io, machine
from ..data.batches import eval_batches
from ..data.config import DataConfig
from ..data.splits import load_splits, subset
from ..files import checkpoints
from ..files.layout import ExportLayout
from ..nets import packed
from ..nets.cost import arch_metrics
from ..nets.layers import ConvBNAct, QConv2d, SqueezeExcite, conv_out
from ..nets.subnet import Subnet
from ..nets.supernet import Supernet
from ..quant import requant
from ..quant.lsq import FULL_PRECISION, qrange, set_bits_
from ..quant.precision import Precision
from ..runtime import model_file as runtime_file
from ..runtime.latency_model import LatencyModel
from ..train.evaluate import prepare_subnet, resize
from .runners import Runner, export_runners, parity, speed, widened

# The lowest opset that holds each stored weight type (INT4 came in opset 21, INT2 in 25);
# HardSwish needs 14, so 17 is the floor, read by every runtime of the last years.
OPSETS = {TensorProto.INT8: 17, TensorProto.INT4: 21, TensorProto.INT2: 25}
IR_VERSIONS = {17: 8, 21: 10, 25: 11}  # the IR version each opset came with
QONNX_DOMAIN = "qonnx.custom_op.general"


class _Graph:
    """Nodes and initializers under generated unique names."""

    def __init__(self):
        self.nodes, self.inits, self.opset = [], [], 17

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def codes(self, name: str, codes: np.ndarray, bits: int) -> str:
        """Signed weight codes as an initializer of the narrowest ONNX type that holds `bits`."""
        dtype = ml_dtypes.int2 if bits <= 2 else ml_dtypes.int4 if bits <= 4 else np.int8
        tensor = numpy_helper.from_array(codes.astype(dtype), name)  # raw bytes, two or four codes a byte
        self.inits.append(tensor)
        self.opset = max(self.opset, OPSETS[tensor.data_type])
        return name

    def node(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, domain=domain or None, **attrs))
        return name


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _step(lsq) -> np.ndarray:
    return lsq.step.detach().abs().float().reshape(()).numpy()


def _quantize_input(g: _Graph, x: str, conv: QConv2d, name: str) -> str:
    """The rule's codes of x, round_half_even(clip(x / |s_a|, Qn, Qp)), as integer-valued floats,
    through QuantizeLinear and DequantizeLinear at scale 1 (exact): the QDQ pair integer runtimes
    turn into an integer convolution."""
    bits, signed = conv.aq.bits, conv.aq.signed
    qn, qp = qrange(bits, signed)
    x = g.node("Div", [x, g.const(f"{name}.a_step", _step(conv.aq))], f"{name}.a_div")
    x = g.node("Clip", [x, g.const(f"{name}.a_min", np.float32(qn)), g.const(f"{name}.a_max", np.float32(qp))],
               f"{name}.a_clip")
    x = g.node("Round", [x], f"{name}.a_round")
    one, z = g.const(f"{name}.a_scale", np.float32(1)), g.const(f"{name}.a_zero", np.int8(0) if signed else np.uint8(0))
    x = g.node("QuantizeLinear", [x, one, z], f"{name}.a_q")
    return g.node("DequantizeLinear", [x, one, z], f"{name}.a_dq")


def _conv_node(g: _Graph, inputs: list[str], conv: nn.Conv2d, name: str) -> str:
    k, p = conv.kernel_size, conv.padding
    return g.node("Conv", inputs, name, kernel_shape=list(k), strides=list(conv.stride),
                  pads=[p[0], p[1], p[0], p[1]], group=conv.groups)


def _is_quantized(conv: nn.Module) -> bool:
    return isinstance(conv, QConv2d) and conv.wq.bits != FULL_PRECISION


def _conv(g: _Graph, x: str, conv: nn.Conv2d, name: str) -> str:
    """A full-precision Conv2d (the stem, SE and every conv of a 32-bit net)."""
    inputs = [x, g.const(f"{name}.weight", _np(conv.weight))]
    return _conv_node(g, inputs + ([g.const(f"{name}.bias", _np(conv.bias))] if conv.bias is not None else []),
                      conv, name)


def _integer_conv(g: _Graph, x: str, conv: QConv2d, bn: nn.BatchNorm2d | None, name: str) -> str:
    """A quantized conv and its BN by the rule: the conv of codes (input and weight dequantized at
    scale 1: integer-valued floats, whose sums are exact), then Mul by the folded per-channel
    scale and Add of the shift (`requant.fold`). `name.w_codes` holds the codes of state-dict key
    `name.weight`."""
    x = _quantize_input(g, x, conv, name)
    codes = g.codes(f"{name}.w_codes", packed.weight_codes(conv).numpy(), conv.wq.bits)
    w = g.node("DequantizeLinear", [codes, g.const(f"{name}.w_scale", np.float32(1))], f"{name}.w_dq")
    x = _conv_node(g, [x, w], conv, name)
    return _epilogue(g, x, requant.fold(conv.aq.step.detach(), conv.wq.step.detach(), bn, conv.out_channels), name)


def _epilogue(g: _Graph, x: str, folded: tuple[np.ndarray, np.ndarray], name: str) -> str:
    """x * scale_c, then + shift_c: two float32 roundings, as the rule has them. The shift is an
    Add, not the conv's bias: onnxruntime's QDQ optimizer (on by default) rounds a float bias of
    a QDQ conv to int32 steps of s_x * s_w_c."""
    scale, shift = folded
    x = g.node("Mul", [x, g.const(f"{name}.scale", scale.reshape(-1, 1, 1))], f"{name}.mul")
    return g.node("Add", [x, g.const(f"{name}.shift", shift.reshape(-1, 1, 1))], f"{name}.add")


def _double(g: _Graph, x: str, name: str, to: int = TensorProto.DOUBLE) -> str:
    """x cast to float64 (exact; float32 weights too, so the file stores them at 4 bytes), or to `to`."""
    return g.node("Cast", [x], name, to=to)


def _stem64(g: _Graph, x: str, m: ConvBNAct, r: int, name: str) -> str:
    """The stem by the rule: its conv summed in float64 (onnxruntime has no float64 Conv: the
    kxk taps as strided slices, then one float64 MatMul), rounded to float32 once, then the
    epilogue with unit steps and the activation."""
    conv = m.conv
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    h = conv_out(r, k, stride)
    x = g.node("Pad", [_double(g, x, f"{name}.f64"), g.const(f"{name}.pads", np.array([0, 0, pad, pad] * 2))],
               f"{name}.pad")
    axes, steps = g.const(f"{name}.axes", np.array([2, 3])), g.const(f"{name}.steps", np.array([stride] * 2))
    span = stride * (h - 1) + 1
    taps = [g.node("Slice", [x, g.const(f"{name}.s{i}{j}", np.array([i, j])),
                             g.const(f"{name}.e{i}{j}", np.array([i + span, j + span])), axes, steps],
                   f"{name}.tap{i}{j}") for i in range(k) for j in range(k)]
    cols = g.node("Transpose", [g.node("Concat", taps, f"{name}.cols", axis=1)], f"{name}.nhwc", perm=[0, 2, 3, 1])
    w = _np(conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.out_channels))  # rows (i, j, c), as the taps
    y = g.node("MatMul", [cols, _double(g, g.const(f"{name}.weight", w), f"{name}.w64")], f"{name}.matmul")
    y = _double(g, g.node("Transpose", [y], f"{name}.nchw", perm=[0, 3, 1, 2]), f"{name}.f32", TensorProto.FLOAT)
    return _act(g, _epilogue(g, y, requant.fold(1.0, 1.0, m.bn, conv.out_channels), name), m.act, name)


def _mean_pool64(g: _Graph, x: str, h: int, name: str) -> str:
    """requant.mean_pool of an h x h x: a float64 mean, rounded to float32 once (ReduceSum, whose
    form is the same from opset 13 on, where ReduceMean's changes at 18)."""
    y = g.node("ReduceSum", [_double(g, x, f"{name}.f64"), g.const(f"{name}.axes", np.array([2, 3]))],
               f"{name}.sum", keepdims=1)
    y = g.node("Div", [y, g.const(f"{name}.n", np.float64(h * h))], f"{name}.mean")
    return _double(g, y, f"{name}.f32", TensorProto.FLOAT)


def _linear64(g: _Graph, x: str, weight: torch.Tensor, bias: torch.Tensor, name: str) -> str:
    """requant.reduce64 of a linear layer on a flat (N, C) x: float64 Gemm, rounded once."""
    w, b = (_double(g, g.const(f"{name}.{k}", _np(t)), f"{name}.{k}64") for k, t in (("weight", weight),
                                                                                        ("bias", bias)))
    y = g.node("Gemm", [_double(g, x, f"{name}.f64"), w, b], f"{name}.gemm", transB=1)
    return _double(g, y, f"{name}.f32", TensorProto.FLOAT)


def _se64(g: _Graph, x: str, se: SqueezeExcite, h: int, name: str) -> str:
    """SE by the rule on an h x h x (float64 pool and 1x1 convs, each rounded once; the gate in float32)."""
    y = g.node("Flatten", [_mean_pool64(g, x, h, f"{name}.pool")], f"{name}.flat")
    y = g.node("Relu", [_linear64(g, y, se.reduce.weight.flatten(1), se.reduce.bias, f"{name}.reduce")],
               f"{name}.relu")
    y = _linear64(g, y, se.expand.weight.flatten(1), se.expand.bias, f"{name}.expand")
    y = g.node("Div", [g.node("Clip", [g.node("Add", [y, g.const(f"{name}.three", np.float32(3))], f"{name}.add3"),
                                       g.const(f"{name}.zero", np.float32(0)), g.const(f"{name}.six", np.float32(6))],
                              f"{name}.clip"), f"{name}.six"], f"{name}.gate")
    y = g.node("Unsqueeze", [y, g.const(f"{name}.hw", np.array([2, 3]))], f"{name}.nc11")
    return g.node("Mul", [x, y], f"{name}.scale")


def _act(g: _Graph, x: str, act: nn.Module | None, name: str) -> str:
    """The activation as `requant.activate` computes it: h_swish as y * clip(y + 3, 0, 6) / 6, op by op."""
    if act is None:
        return x
    if isinstance(act, nn.ReLU):
        return g.node("Relu", [x], f"{name}.act")
    zero, six = g.const(f"{name}.act_min", np.float32(0)), g.const(f"{name}.act_max", np.float32(6))
    if isinstance(act, nn.ReLU6):  # Clip takes its bounds as inputs
        return g.node("Clip", [x, zero, six], f"{name}.act")
    t = g.node("Add", [x, g.const(f"{name}.act_three", np.float32(3))], f"{name}.act_add")
    t = g.node("Mul", [x, g.node("Clip", [t, zero, six], f"{name}.act_clip")], f"{name}.act_mul")
    return g.node("Div", [t, six], f"{name}.act")


def _conv_bn_act(g: _Graph, x: str, m: ConvBNAct, name: str) -> str:
    if _is_quantized(m.conv):
        return _act(g, _integer_conv(g, x, m.conv, m.bn, f"{name}.conv"), m.act, name)
    return _act(g, _bn(g, _conv(g, x, m.conv, f"{name}.conv"), m.bn, name), m.act, name)


def _bn(g: _Graph, x: str, bn: nn.BatchNorm2d | None, name: str) -> str:
    if bn is None:
        return x
    return g.node("BatchNormalization", [x] + [g.const(f"{name}.bn.{k}", _np(getattr(bn, k))) for k in
                                               ("weight", "bias", "running_mean", "running_var")],
                  f"{name}.bn", epsilon=bn.eps)


def _quant(g: _Graph, x: str, scale: np.ndarray, bits: int, signed: bool, narrow: bool, name: str) -> str:
    """QONNX's Quant: clip(round_half_even(x / scale), Qn, Qp) * scale, zero point 0."""
    inputs = [x, g.const(f"{name}.scale", scale), g.const(f"{name}.zeropt", np.float32(0)),
              g.const(f"{name}.bitwidth", np.float32(bits))]
    return g.node("Quant", inputs, name, domain=QONNX_DOMAIN, signed=int(signed), narrow=int(narrow),
                  rounding_mode="ROUND")


def _qonnx_conv_bn_act(g: _Graph, x: str, m: ConvBNAct, name: str) -> str:
    """A quantized conv as QONNX writes it: Quant on the input and on the weight (w_hat, which
    quantizes back to exactly its codes), then the float conv, BN and activation."""
    if not _is_quantized(m.conv):
        return _conv_bn_act(g, x, m, name)
    conv, cname = m.conv, f"{name}.conv"
    x = _quant(g, x, _step(conv.aq), conv.aq.bits, conv.aq.signed, False, f"{cname}.a_quant")
    w_hat = packed.weight_codes(conv).float() * conv.wq.step.detach().abs().float()
    # 1-bit weights are LSQ's sign, codes in {-1, 0, 1}: the narrow signed 2-bit range
    w = _quant(g, g.const(f"{cname}.weight", _np(w_hat)), _step(conv.wq), max(conv.wq.bits, 2), True,
               conv.wq.bits == 1, f"{cname}.w_quant")
    return _act(g, _bn(g, _conv_node(g, [x, w], conv, cname), m.bn, name), m.act, name)


def _se(g: _Graph, x: str, se: SqueezeExcite, name: str) -> str:
    y = g.node("GlobalAveragePool", [x], f"{name}.pool")
    y = g.node("Relu", [_conv(g, y, se.reduce, f"{name}.reduce")], f"{name}.relu")
    # torch's hardsigmoid is relu6(x + 3) / 6
    y = g.node("HardSigmoid", [_conv(g, y, se.expand, f"{name}.expand")], f"{name}.hsig", alpha=1 / 6, beta=0.5)
    return g.node("Mul", [x, y], f"{name}.scale")



def _graph(net: Subnet, conv_bn_act, exact: bool = False) -> _Graph:
    """Every node of `net` in eval mode, its quantized convs written by `conv_bn_act`; `exact`:
    the stem, SE, pooling and classifier by the rule of `requant.py` (float64 reductions)."""
    g = _Graph()
    x = _stem64(g, "input", net.stem, net.arch.r, "stem") if exact else _conv_bn_act(g, "input", net.stem, "stem")
    size = conv_out(net.arch.r, net.stem.conv.kernel_size[0], net.stem.conv.stride[0])  # of x, for the pools
    for i, b in enumerate(net.blocks):
        name = f"blocks.{i}"
        h = x if b.expand is None else conv_bn_act(g, x, b.expand, f"{name}.expand")
        h = conv_bn_act(g, h, b.dw, f"{name}.dw")
        size = conv_out(size, b.dw.conv.kernel_size[0], b.dw.conv.stride[0])
        if b.se is not None:
            h = _se64(g, h, b.se, size, f"{name}.se") if exact else _se(g, h, b.se, f"{name}.se")
        h = conv_bn_act(g, h, b.project, f"{name}.project")
        x = g.node("Add", [h, x], f"{name}.add") if b.residual else h
    for h in net.space.head_layers():
        if h is not None:
            x = conv_bn_act(g, x, getattr(net, h.name), h.name)
        else:
            x = _mean_pool64(g, x, size, "pool") if exact else g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "flatten")
    c = net.classifier
    if exact:
        g.node("Identity", [_linear64(g, x, c.weight, c.bias, "classifier")], "logits")
    else:
        g.node("Gemm", [x, g.const("classifier.weight", _np(c.weight)), g.const("classifier.bias", _np(c.bias))],
               "logits", transB=1)
    return g


def _model(net: Subnet, g: _Graph, domains: dict[str, int]) -> onnx.ModelProto:
    space, r = net.space, net.arch.r
    graph = helper.make_graph(
        g.nodes, f"oqat-{Precision.of(net.bits).name}", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         ["N", space.in_channels, r, r])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", space.num_classes])], g.inits)
    opsets = [helper.make_opsetid("", g.opset)] + [helper.make_opsetid(d, v) for d, v in domains.items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="oqat",
                              doc_string=f"{net.arch.to_str()} at {Precision.of(net.bits).label}")
    model.ir_version = IR_VERSIONS[g.opset]
    return model


def build_onnx(net: Subnet) -> onnx.ModelProto:
    """The integer-arithmetic ONNX model of `net` as it computes in eval mode (a 32-bit net:
    its plain float graph), checked by onnx.checker."""
    model = _model(net, _graph(net, _conv_bn_act, exact=_is_quantized(net.blocks[0].dw.conv)), {})
    onnx.checker.check_model(model, full_check=True)
    return model


def build_qonnx(net: Subnet) -> onnx.ModelProto:
    """The QONNX model of `net`: Quant nodes at the network's bit-widths (a custom domain, which
    onnx.checker checks only structurally; the `qonnx` package executes it)."""
    model = _model(net, _graph(net, _qonnx_conv_bn_act), {QONNX_DOMAIN: 1})
    onnx.checker.check_model(model)
    return model


def fp32_graph(net: Subnet) -> onnx.ModelProto:
    """The float graph of `net` with its quantizers off: the export's fp32 self, for speed."""
    return build_onnx(set_bits_(copy.deepcopy(net), FULL_PRECISION))


def runners(net: Subnet, threads: int | None = None) -> dict[str, Runner]:
    """runtime -> a Runner of `net`'s export, in every runtime here (oqat's for a quantized net)."""
    own = None if net.bits == FULL_PRECISION else runtime_file.to_bytes(net.eval())
    return {name.split()[0]: r for name, r in export_runners(build_onnx(net), own, threads).items()}


def sizes(model: onnx.ModelProto, fp32: onnx.ModelProto, paths: dict[str, str]) -> dict[str, int]:
    """Bytes of the network as an ONNX file in fp32, as the export with int8 codes, and as
    written: the .onnx at the weights' true width, the QONNX file, the packed weights and the
    runtime's file."""
    return {"fp32": fp32.ByteSize(), "int8": widened(model).ByteSize(),
            **{k: os.path.getsize(paths[k]) for k in ("onnx", "qonnx", "packed", "runtime") if k in paths}}


def export(net: Subnet, out_dir: str, test: tuple[torch.Tensor, torch.Tensor] | None = None,
           mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
           source: str | None = None, speed_rounds: int = 5, preprocess: dict | None = None,
           classes: tuple[str, ...] | None = None, data: DataConfig | None = None,
           latency: LatencyModel | None = None) -> dict:
    """Write model.onnx (integer graph), model.qonnx.onnx, weights.oqpk, arch.json and
    MODEL_CARD.md for `net` (eval mode, BN final) into out_dir. `test` = (normalised images
    at net.arch.r, labels) gives the card the test top-1 of PyTorch and of each runtime;
    `speed_rounds` > 0 times the export against its fp32 self on this machine; `latency` adds
    its latency model's prediction. Returns the card's facts."""
    net = net.eval()
    os.makedirs(out_dir, exist_ok=True)
    out = ExportLayout(out_dir)
    paths = {"onnx": out.onnx, "qonnx": out.qonnx, "packed": out.packed, "arch": out.arch, "card": out.card}
    model, fp32 = build_onnx(net), fp32_graph(net)
    for key, m in (("onnx", model), ("qonnx", build_qonnx(net))):
        io.atomic_write(paths[key], lambda f, m=m: f.write(m.SerializeToString()))
    if net.bits != FULL_PRECISION:  # oqat's runtime runs quantized networks only
        runtime_file.write(net, out.runtime)
        paths["runtime"] = out.runtime
    # With its data config, so that evaluating the folder needs no --dataset.
    checkpoints.save_packed(net, paths["packed"], {"source": source}, data=data)
    arch = net.arch
    io.write_json(paths["arch"], {**arch.to_dict(), "bits": net.bits})  # `oqat cost --arch` costs its bits
    facts = {"arch": arch.to_str(), "bits": net.bits, "cost": arch_metrics(arch, net.space, net.bits),
             "input": [net.space.in_channels, arch.r, arch.r], "mean": mean, "std": std, "source": source,
             "sizes": sizes(model, fp32, paths), "machine": machine.summary(), "preprocess": preprocess,
             "classes": list(classes) if classes else None}
    if test is not None:
        images, labels = test
        runners = export_runners(model, paths.get("runtime"))
        parities = {name.split()[0]: parity(net, run, images) for name, run in runners.items()}
        ref = next(iter(parities.values()))["torch_logits"]
        facts["test"] = {"n": len(images), "torch_top1": _top1(ref, labels), "runtimes": {
            r: {"top1": _top1(p["runtime_logits"], labels), "top1_agreement": 100.0 * p["top1_agreement"],
                "within_1e-3": 100.0 * p["within_1e-3"], "max_gap": p["max_gap"]} for r, p in parities.items()}}
    if speed_rounds > 0:
        runners = {**export_runners(fp32, None, 1, "fp32"),
                   **export_runners(model, paths.get("runtime"), 1)}
        facts["speed"] = speed(runners, tuple(facts["input"]), rounds=speed_rounds)
    if latency is not None:
        facts["latency_model"] = {"predicted_ms": latency.predict(arch, None if arch.b else net.bits),
                                  "threads": latency.threads, "batch": latency.batch, "model": latency.describe()}
    io.write_text(paths["card"], model_card(facts))
    return facts


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def export_checkpoint(path: str, arch: str | None, out_dir: str, calib_images: int, test_images: int,
                      data_cfg: DataConfig | None = None, seed: int = 0, source: str | None = None,
                      speed_rounds: int = 5, latency: LatencyModel | None = None) -> dict:
    """The one path from a trained file to an export folder, for `oqat export` and `oqat run`:
    a supernet file's subnet of `arch` (any form `read_arch` reads, checked against the
    file's space) is extracted and its BN recalibrated on `calib_images`
    training images (the seeded subset a search with `seed` uses, so the export is the front's
    subnet), a subnet file's is taken as it is; then it is exported with its test top-1 on
    `test_images` test images. Data: `data_cfg`, else the file's own data config. `latency`: a
    latency model whose prediction the card gives beside the measured time."""
    model, ckpt = checkpoints.load_model(path)
    arch = checkpoints.subnet_arch(model, arch, path)
    data_cfg = data_cfg or ckpt["data"]
    splits = load_splits(data_cfg) if data_cfg is not None else None
    if isinstance(model, Supernet):
        if splits is None:
            raise ValueError(f"'{path}' holds no data config, needed to recalibrate BN: give --dataset "
                             "(and --data-root, --data KEY=VALUE)")
        net = prepare_subnet(model, arch, data_cfg, splits, calib_images, seed)
    else:
        net = model
    net = net.to(memory_format=torch.contiguous_format)
    test = None
    if splits is not None and test_images > 0:
        pairs = list(eval_batches(subset(splits.test, min(test_images, len(splits.test)), 0), data_cfg, net.arch.r))
        test = resize(torch.cat([x for x, _ in pairs]), net.arch.r), torch.cat([y for _, y in pairs])
    return export(net, out_dir, test, splits and splits.mean, splits and splits.std,
                  source or os.path.basename(path), speed_rounds, splits and splits.preprocess(net.arch.r),
                  splits and splits.classes, data_cfg, latency)


def _bits_text(bits) -> str:
    """The model card's precision: its label, and for a mixed one where each layer's width is."""
    p = Precision.of(bits)
    return p.label + (" per block (the architecture's b: first block, each block, head)" if p.mixed else "")


def model_card(f: dict) -> str:
    c, s = f["cost"], f["sizes"]
    lines = [f"# oqat subnet `{f['arch']}`", "",
             f"- bits: {_bits_text(f['bits'])} (weights and inputs of the quantized convs; stem, SE and "
             "classifier fp32)",
             f"- input: float32 N x {' x '.join(map(str, f['input']))}, pixels in [0, 1] normalised as "
             f"(x - mean) / std with mean {_fmt(f['mean'])}, std {_fmt(f['std'])}; resize to "
             f"{f['input'][1]} px bilinear first",
             "- output: logits (N x classes)",
             f"- source: {f['source'] or 'unknown'}", "", "## Cost", "",
             "| MACs | params | BitOPs | FLOPs_q | size (bits) |", "|---|---|---|---|---|",
             f"| {c['macs']:,} | {c['params']:,} | {c['bitops']:,} | {c['flops_q']:,.0f} | {c['size_bits']:,} |", "",
             "## Accuracy", ""]
    t = f.get("test")
    if t is None:
        lines.append("not measured (no data given)")
    else:
        lines.append(f"Top-1 on {t['n']} test images: PyTorch {t['torch_top1']:.2f}%; " + ", ".join(
            f"{r} {v['top1']:.2f}%" for r, v in t["runtimes"].items()) + ".")
        for r, v in t["runtimes"].items():
            lines.append(f"- {r} vs PyTorch: top-1 agrees on {v['top1_agreement']:.2f}% of images; logits within "
                         f"1e-3 of their range on {v['within_1e-3']:.2f}% (largest difference {v['max_gap']:.2e}: "
                         "an activation within a float ulp of a rounding boundary can round the other way)")
    sp = f.get("speed")
    if sp is not None:
        lines += ["", f"## Speed on {f['machine']}", "",
                  f"Median ms per batch, {sp['threads']} thread(s); fp32 = this network with its quantizers off.", ""]
        names = list(next(iter(sp["batches"].values())))
        lines += ["| batch | " + " | ".join(names) + " | fastest fp32 / fastest export |",
                  "|---" * (len(names) + 2) + "|"]
        for b, ms in sp["batches"].items():
            lines.append(f"| {b} | " + " | ".join(f"{ms[n]:.3f}" for n in names) + f" | {speedup(ms):.2f}x |")
    if (lm := f.get("latency_model")) is not None:
        measured = measured_ms(f)
        lines += ["", f"Predicted by the latency model ({lm['model']}): {lm['predicted_ms']:.3f} ms per batch of "
                  f"{lm['batch']}" + (f"; measured above: {measured:.3f} ms." if measured is not None else ".")]
    lines += ["", "## Files", ""]
    if "runtime" in s:
        lines.append(f"- `{ExportLayout.RUNTIME}` ({s['runtime']:,} bytes): oqat's runtime's file, weight codes at "
                     "their bit width; `oqat.deploy.runners.Runner(folder, \"oqat\")`, `oqat predict` and the C API "
                     "(docs/deployment.md) run it on the codes themselves")
    lines += [f"- `{ExportLayout.ONNX}` ({s['onnx']:,} bytes): integer QDQ graph, weight codes at their true width "
              "(INT4 to 4 bits, INT2 to 2), BN folded into per-channel scales; `oqat.deploy.runners.Runner` runs it "
              "(OpenVINO: int8 convolutions; onnxruntime: the reference)",
              f"- `{ExportLayout.QONNX}` ({s['qonnx']:,} bytes): QONNX (Quant nodes at the real bit-widths) "
              "for FINN, hls4ml",
              f"- `{ExportLayout.PACKED}` ({s['packed']:,} bytes): weights packed at b bits; "
              "`oqat.files.load_packed(path)` rebuilds the PyTorch subnet",
              f"- for comparison, as .onnx files: fp32 {s['fp32']:,} bytes, the export with int8 codes "
              f"{s['int8']:,} bytes",
              f"- `{ExportLayout.ARCH}`: the architecture", ""]
    return "\n".join(lines)


def measured_ms(f: dict) -> float | None:
    """The export's measured batch-1 ms in oqat's runtime, where its facts have one: what a
    latency model's prediction (1 thread, batch 1) is compared with."""
    sp = f.get("speed")
    return (sp["batches"].get("1") or sp["batches"].get(1) or {}).get("oqat export") if sp and sp["threads"] == 1 \
        else None


def speedup(ms: dict[str, float]) -> float:
    """The fastest fp32 runtime's time over the fastest export's, from one speed row."""
    return min(v for k, v in ms.items() if k.endswith("fp32")) / min(v for k, v in ms.items() if k.endswith("export"))


def _fmt(values) -> str:
    return "unknown" if values is None else "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
