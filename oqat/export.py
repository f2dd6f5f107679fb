"""Deployable export of one subnet: ONNX with explicit low-bit QDQ, packed weights, a card.

The ONNX graph is written with `onnx.helper` straight from the static `Subnet`, not
traced: every op is chosen, so the quantizers keep their exact arithmetic. A quantized
conv (weight and input each at b bits, step s) becomes

    x -> Clip[Qn*|s_a|, Qp*|s_a|] -> QuantizeLinear(|s_a|, uint8 0) -> DequantizeLinear -> Conv
    w_q (int8 initializer) -> DequantizeLinear(|s_w|, int8 0) ------------------------------^

QuantizeLinear computes round-half-even(x / scale), as LSQ does (onnxruntime divides,
it does not multiply by 1/scale; tested), and saturates only to the int8/uint8 range, so
the Clip makes the b-bit range explicit. int8/uint8 carry every width from 1 to 8 bits:
onnxruntime 1.32 also runs int4/uint4 Q/DQ, but there is no ONNX type for 2 or 3 bits, and
one path for all widths is simpler to check. Weight codes are precomputed (`packed.weight_codes`),
so 1-bit (sign) weights export as codes in {-1, 0, 1}. Input: the normalised image batch at
the architecture's resolution (N x C x r x r, N dynamic); output: logits.

Parity is float-exact for most images, not all: the engines sum convolutions and pools in
different orders and torch's BN uses FMA, so an activation within a float ulp of a rounding
boundary can round to the neighbouring code in one engine (about 1 image in 1,000).
"""
import io
import json
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from . import checkpoint, files, packed
from .cost import cost
from .data import DataConfig, eval_batches, load_splits, subset
from .evaluate import prepare_subnet, resize
from .layers import ConvBNAct, MBConv, QConv2d, SqueezeExcite
from .quant import FULL_PRECISION, qrange
from .space import Arch
from .subnet import Subnet
from .supernet import Supernet

OPSET = 17  # HardSwish needs 13+; 17 is widely supported by other runtimes
ONNX_FILE, PACKED_FILE, ARCH_FILE, CARD_FILE = "model.onnx", "weights.oqpk", "arch.json", "MODEL_CARD.md"
ACT_OPS = {nn.ReLU: "Relu", nn.Hardswish: "HardSwish"}


class _Graph:
    """Nodes and initializers under generated unique names."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _quantize_input(g: _Graph, x: str, conv: QConv2d, name: str) -> str:
    bits, signed = conv.aq.bits, conv.aq.signed
    qn, qp = qrange(bits, signed)
    scale = conv.aq.step.detach().abs().float().reshape(())
    lo, hi = (np.float32(v) * scale.numpy() for v in (qn, qp))
    x = g.node("Clip", [x, g.const(f"{name}.a_min", lo), g.const(f"{name}.a_max", hi)], f"{name}.a_clip")
    s, z = g.const(f"{name}.a_scale", scale.numpy()), g.const(f"{name}.a_zero", np.int8(0) if signed else np.uint8(0))
    x = g.node("QuantizeLinear", [x, s, z], f"{name}.a_q")
    return g.node("DequantizeLinear", [x, s, z], f"{name}.a_dq")


def _conv(g: _Graph, x: str, conv: nn.Conv2d, name: str) -> str:
    """A Conv2d; for a QConv2d at < 32 bits, its input and weight through Q/DQ. Names
    follow the module names, so `name.w_codes` is the codes of state-dict key `name.weight`."""
    if isinstance(conv, QConv2d) and conv.wq.bits != FULL_PRECISION:
        x = _quantize_input(g, x, conv, name)
        codes = g.const(f"{name}.w_codes", packed.weight_codes(conv).numpy())
        s = g.const(f"{name}.w_scale", conv.wq.step.detach().abs().float().reshape(()).numpy())
        w = g.node("DequantizeLinear", [codes, s, g.const(f"{name}.w_zero", np.int8(0))], f"{name}.w_dq")
    else:
        w = g.const(f"{name}.weight", _np(conv.weight))
    inputs = [x, w] + ([g.const(f"{name}.bias", _np(conv.bias))] if conv.bias is not None else [])
    k, p = conv.kernel_size, conv.padding
    return g.node("Conv", inputs, name, kernel_shape=list(k), strides=list(conv.stride),
                  pads=[p[0], p[1], p[0], p[1]], group=conv.groups)


def _conv_bn_act(g: _Graph, x: str, m: ConvBNAct, name: str) -> str:
    x = _conv(g, x, m.conv, f"{name}.conv")
    if m.bn is not None:
        bn = m.bn
        x = g.node("BatchNormalization", [x] + [g.const(f"{name}.bn.{k}", _np(getattr(bn, k))) for k in
                                                ("weight", "bias", "running_mean", "running_var")],
                   f"{name}.bn", epsilon=bn.eps)
    if isinstance(m.act, nn.ReLU6):  # Clip takes its bounds as inputs
        x = g.node("Clip", [x, g.const(f"{name}.act_min", np.float32(0)), g.const(f"{name}.act_max", np.float32(6))],
                   f"{name}.act")
    elif m.act is not None:
        x = g.node(ACT_OPS[type(m.act)], [x], f"{name}.act")
    return x


def _se(g: _Graph, x: str, se: SqueezeExcite, name: str) -> str:
    y = g.node("GlobalAveragePool", [x], f"{name}.pool")
    y = g.node("Relu", [_conv(g, y, se.reduce, f"{name}.reduce")], f"{name}.relu")
    # torch's hardsigmoid is relu6(x + 3) / 6
    y = g.node("HardSigmoid", [_conv(g, y, se.expand, f"{name}.expand")], f"{name}.hsig", alpha=1 / 6, beta=0.5)
    return g.node("Mul", [x, y], f"{name}.scale")


def _mbconv(g: _Graph, x: str, b: MBConv, name: str) -> str:
    h = x if b.expand is None else _conv_bn_act(g, x, b.expand, f"{name}.expand")
    h = _conv_bn_act(g, h, b.dw, f"{name}.dw")
    if b.se is not None:
        h = _se(g, h, b.se, f"{name}.se")
    h = _conv_bn_act(g, h, b.project, f"{name}.project")
    return g.node("Add", [x, h], f"{name}.add") if b.residual else h


def build_onnx(net: Subnet) -> onnx.ModelProto:
    """The ONNX model of `net` as it computes in eval mode (checked by onnx.checker)."""
    g = _Graph()
    x = _conv_bn_act(g, "input", net.stem, "stem")
    for i, block in enumerate(net.blocks):
        x = _mbconv(g, x, block, f"blocks.{i}")
    for h in net.space.head_layers():
        x = g.node("GlobalAveragePool", [x], "pool") if h is None else _conv_bn_act(g, x, getattr(net, h.name), h.name)
    x = g.node("Flatten", [x], "flatten")
    c = net.classifier
    g.node("Gemm", [x, g.const("classifier.weight", _np(c.weight)), g.const("classifier.bias", _np(c.bias))],
           "logits", transB=1)
    space, r = net.space, net.arch.r
    graph = helper.make_graph(
        g.nodes, f"oqat-{net.bits}bit", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         ["N", space.in_channels, r, r])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", space.num_classes])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="oqat",
                              doc_string=f"{net.arch.to_str()} at {net.bits} bits")
    model.ir_version = 8  # what onnxruntime releases since 1.14 read at opset 17
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_session(model: "onnx.ModelProto | str", threads: int | None = None):
    """An onnxruntime CPU session of a model or an .onnx file."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Logits of onnxruntime on a (normalised, resized) batch, `batch` images at a time."""
    outs = [session.run(None, {"input": _np(x[i:i + batch])})[0] for i in range(0, len(x), batch)]
    return torch.from_numpy(np.concatenate(outs))


def state_dict_bytes(net: nn.Module) -> int:
    """Size of the plain fp32 state dict as torch.save writes it."""
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, buf)
    return buf.tell()


def _write_text(path: str, text: str) -> None:
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def parity(net: Subnet, session, x: torch.Tensor) -> dict:
    """How closely onnxruntime follows PyTorch on inputs x: top-1 agreement (fraction), and
    per image the largest logit difference as a fraction of the logits' range (`gaps`)."""
    channels_last = net.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = net.eval()(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    out = run_onnx(session, x)
    gaps = (out - ref).abs().max(1).values / (ref.max() - ref.min()).clamp_min(1e-12)
    return {"n": len(x), "top1_agreement": (out.argmax(1) == ref.argmax(1)).float().mean().item(),
            "max_gap": gaps.max().item(), "within_1e-3": (gaps <= 1e-3).float().mean().item(),
            "gaps": gaps, "torch_logits": ref, "onnx_logits": out}


def export(net: Subnet, out_dir: str, test: tuple[torch.Tensor, torch.Tensor] | None = None,
           mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
           source: str | None = None) -> dict:
    """Write model.onnx, weights.oqpk, arch.json and MODEL_CARD.md for `net` (eval mode,
    BN final) into out_dir. `test` = (normalised images at net.arch.r, labels) gives the
    card the test top-1 of both PyTorch and onnxruntime. Returns the card's facts."""
    net = net.eval()
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("onnx", ONNX_FILE), ("packed", PACKED_FILE), ("arch", ARCH_FILE), ("card", CARD_FILE))}
    model = build_onnx(net)
    checkpoint.atomic_write(paths["onnx"], lambda f: f.write(model.SerializeToString()))
    packed.save(net, paths["packed"], {"source": source})
    arch = net.arch
    _write_text(paths["arch"], json.dumps(arch.to_dict(), indent=1) + "\n")
    facts = {"arch": arch.to_str(), "bits": net.bits, "cost": cost(arch, net.space, net.bits),
             "input": [net.space.in_channels, arch.r, arch.r], "mean": mean, "std": std, "source": source,
             "sizes": {"fp32_state_dict": state_dict_bytes(net), "packed": os.path.getsize(paths["packed"]),
                       "onnx": os.path.getsize(paths["onnx"])}}
    if test is not None:
        images, labels = test
        p = parity(net, onnx_session(paths["onnx"]), images)
        top1 = {k: 100.0 * (p[f"{k}_logits"].argmax(1) == labels).float().mean().item() for k in ("torch", "onnx")}
        facts["test"] = {"n": p["n"], "torch_top1": top1["torch"], "onnx_top1": top1["onnx"],
                         "top1_agreement": 100.0 * p["top1_agreement"], "within_1e-3": 100.0 * p["within_1e-3"],
                         "max_gap": p["max_gap"]}
    _write_text(paths["card"], model_card(facts))
    return facts


def export_checkpoint(path: str, arch: str | None, out_dir: str, calib_images: int, test_images: int,
                      data_cfg: DataConfig | None = None, seed: int = 0, source: str | None = None) -> dict:
    """The one path from a trained file to an export folder, for `oqat export` and `oqat run`:
    a supernet file's subnet of `arch` (any form `Arch.parse` reads, checked against the
    file's space) is extracted and its BN recalibrated on `calib_images`
    training images (the seeded subset a search with `seed` uses, so the export is the front's
    subnet), a subnet file's is taken as it is; then it is exported with its test top-1 on
    `test_images` test images. Data: `data_cfg`, else the file's own data config."""
    model, ckpt = files.load_model(path)
    arch = Arch.parse(arch, model.space) if arch is not None else None
    data_cfg = data_cfg or ckpt["data"]
    splits = load_splits(data_cfg) if data_cfg is not None else None
    if isinstance(model, Supernet):
        if arch is None:
            raise ValueError(f"'{path}' is a supernet: give --arch to choose the subnet")
        if splits is None:
            raise ValueError(f"'{path}' holds no data config, needed to recalibrate BN: give --data-config")
        net = prepare_subnet(model, arch, data_cfg, splits, calib_images, seed)
    else:
        if arch is not None and arch != model.arch:
            raise ValueError(f"--arch {arch} differs from the subnet in '{path}' ({model.arch})")
        net = model
    net = net.to(memory_format=torch.contiguous_format)
    test = None
    if splits is not None and test_images > 0:
        pairs = list(eval_batches(subset(splits.test, min(test_images, len(splits.test)), 0), data_cfg, net.arch.r))
        test = resize(torch.cat([x for x, _ in pairs]), net.arch.r), torch.cat([y for _, y in pairs])
    return export(net, out_dir, test, splits and splits.mean, splits and splits.std,
                  source or os.path.basename(path))


def model_card(f: dict) -> str:
    c, s = f["cost"], f["sizes"]
    lines = [f"# oqat subnet `{f['arch']}`", "",
             f"- bits: {f['bits']} (weights and inputs of every quantized conv; stem, SE, BN and classifier fp32)",
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
        lines += [f"- test top-1 on {t['n']} test images: PyTorch {t['torch_top1']:.2f}%, "
                  f"onnxruntime {t['onnx_top1']:.2f}%",
                  f"- onnxruntime vs PyTorch: top-1 agrees on {t['top1_agreement']:.2f}% of images; logits "
                  f"within 1e-3 of their range on {t['within_1e-3']:.2f}% (largest difference {t['max_gap']:.2e}; "
                  "an activation within a float ulp of a rounding boundary can round the other way)"]
    lines += ["", "## Files", "",
              f"- `{ONNX_FILE}` ({s['onnx']:,} bytes): QDQ graph, weight codes as int8, explicit b-bit Clip",
              f"- `{PACKED_FILE}` ({s['packed']:,} bytes): weights packed at b bits; "
              "`oqat.files.load_packed(path)` rebuilds the PyTorch subnet",
              f"- fp32 state dict for comparison: {s['fp32_state_dict']:,} bytes",
              f"- `{ARCH_FILE}`: the architecture", ""]
    return "\n".join(lines)


def _fmt(values) -> str:
    return "unknown" if values is None else "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
