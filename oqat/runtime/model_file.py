"""The runtime's model file (`model.oqrt`): a static subnet lowered to a list of ops on integer
codes, written and checked here; the C reader (src/reader.c) checks the same rules.

Little-endian throughout:

    header     64 bytes: magic b"OQRT", version, in_c, in_h, in_w, num_classes, n_ops, n_blobs,
               meta (blob of a JSON text, or NONE), file_size (u64), then zeros
    ops        n_ops records of 20 u32 words (OP_FIELDS); op i writes value i + 1, value 0 is
               the input image (float32 NCHW)
    blobs      n_blobs entries (u64 offset, u64 nbytes, u32 kind, u32 count)
    data       each blob at a 64-byte aligned offset
    crc32      of every byte before it (zlib's)

A value is float32 or, where an op writes its consumer's codes, uint8 codes u = q - qn of the
quantizer (out_step, out_qn, out_qp); shapes follow from the ops ((h, w, c), NHWC). Weight codes
stay at their bit width: `oqat.nets.packed.pack`'s little-endian bit stream. A quantized conv's
epilogue (scale, shift) is `requant.fold`'s; every other float is the network's own.
"""
import dataclasses
import json
import struct
import zlib

import numpy as np
import torch

from ..core import io
from ..nets.packed import code_width, pack, unpack, weight_codes
from ..nets.subnet import Subnet
from ..quant import requant
from ..quant.lsq import FULL_PRECISION, LSQ, qrange

MAGIC, VERSION = b"OQRT", 1
NONE = 0xFFFFFFFF  # no value, no blob
HEADER = struct.Struct("<4s8I4xQ")  # then zeros to 64 bytes
HEADER_BYTES, ALIGN = 64, 64
OP_FIELDS = ("type", "inp", "res", "out_u8", "cout", "k", "stride", "act", "wbits", "out_step", "out_qn",
             "out_qp", "name", "blob0", "blob1", "blob2", "blob3", "reserved0", "reserved1", "reserved2")
OP = struct.Struct("<9If2i8I")
BLOB = struct.Struct("<QQII")
STEM, QUANT, CONV1X1, DWCONV, SE, POOL, LINEAR = range(1, 8)
OP_NAMES = {STEM: "stem", QUANT: "quant", CONV1X1: "conv1x1", DWCONV: "dwconv", SE: "se", POOL: "pool",
            LINEAR: "linear"}
F32, CODES, TEXT = 1, 2, 3  # blob kinds
ACTS = {None: 0, "relu": 1, "relu6": 2, "h_swish": 3}  # oq_epilogue's OQ_ACT_*
# Bounds the reader holds a file to: no product of them overflows, and int32 sums stay exact.
MAX_CHANNELS, MAX_SIDE, MAX_IN_CHANNELS, MAX_OPS, MAX_K, MAX_STRIDE, MAX_NAME = 8192, 4096, 64, 4096, 11, 4, 256


class FormatError(ValueError):
    pass


@dataclasses.dataclass
class Op:
    """One op as the file holds it; `inp` and `res` are value ids (NONE: none), `blobs` arrays."""
    type: int
    name: str
    inp: int
    res: int = NONE
    cout: int = 0
    k: int = 0
    stride: int = 0
    act: int = 0
    wbits: int = 0
    out: tuple[float, int, int] | None = None  # (step, qn, qp) of the codes it writes, None: float32
    blobs: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ModelFile:
    in_shape: tuple[int, int, int]  # (c, h, w)
    num_classes: int
    meta: dict
    ops: list[Op]
    shapes: list[tuple[int, int, int]]  # (h, w, c) of every value, the input's included


# --- lowering -------------------------------------------------------------------------------

def _quantizer(aq: LSQ) -> tuple[float, int, int]:
    qn, qp = qrange(aq.bits, aq.signed)
    return float(aq.step.detach().abs().float()), qn, qp


class _Lowering:
    """Ops with float outputs and explicit QUANT ops; `fuse` then lets a value's producer write
    the codes itself where a quantizer is the value's only reader."""

    def __init__(self):
        self.ops: list[Op] = []

    def add(self, op: Op) -> int:
        self.ops.append(op)
        return len(self.ops)

    def quant(self, x: int, aq: LSQ, name: str) -> int:
        return self.add(Op(QUANT, name, x, out=_quantizer(aq)))

    def conv(self, x: int, m, name: str, res: int = NONE) -> int:
        """A quantized ConvBNAct (1x1 or depthwise) on the float value x."""
        conv = m.conv
        if conv.wq.bits == FULL_PRECISION or conv.aq.bits == FULL_PRECISION:
            raise ValueError(f"{name} is full precision: the runtime runs quantized networks only "
                             "(a 32-bit network deploys through the ONNX export)")
        codes = weight_codes(conv).numpy()
        scale, shift = requant.fold(conv.aq.step.detach(), conv.wq.step.detach(), m.bn, conv.out_channels)
        u = self.quant(x, conv.aq, f"{name}.quant")
        k, depthwise = conv.kernel_size[0], conv.groups > 1
        if depthwise:
            return self.add(Op(DWCONV, name, u, res, k=k, stride=conv.stride[0], act=ACTS[requant.act_name(m.act)],
                               wbits=conv.wq.bits, blobs=[codes.reshape(-1), scale, shift]))
        if k != 1 or conv.groups != 1:
            raise ValueError(f"{name}: the runtime runs 1x1 and depthwise convs, not {k}x{k} groups={conv.groups}")
        return self.add(Op(CONV1X1, name, u, res, cout=conv.out_channels, act=ACTS[requant.act_name(m.act)],
                           wbits=conv.wq.bits, blobs=[codes.reshape(-1), scale, shift]))

    def fuse(self) -> list[Op]:
        readers = [0] * (len(self.ops) + 1)
        for op in self.ops:
            for v in (op.inp, op.res):
                if v != NONE:
                    readers[v] += 1
        keep, new_id = [], {0: 0}
        for i, op in enumerate(self.ops, 1):
            src = self.ops[op.inp - 1] if op.type == QUANT and op.inp > 0 else None
            if src is not None and readers[op.inp] == 1 and src.out is None and src.type != LINEAR:
                src.out = op.out  # the producer writes the codes; this op's value is the producer's
                new_id[i] = new_id[op.inp]
                continue
            op.inp = new_id[op.inp]
            op.res = NONE if op.res == NONE else new_id[op.res]
            keep.append(op)
            new_id[i] = len(keep)
        return keep


def _f32(t) -> np.ndarray:
    return t.detach().float().contiguous().numpy().reshape(-1)


def lower(net: Subnet) -> list[Op]:
    """The ops of `net` (its eval-mode computation), in order, as `write` stores them."""
    space, lo = net.space, _Lowering()
    stem = net.stem
    scale, shift = requant.fold(1.0, 1.0, stem.bn, space.stem_width)
    x = lo.add(Op(STEM, "stem", 0, cout=space.stem_width, k=stem.conv.kernel_size[0], stride=stem.conv.stride[0],
                  act=ACTS[requant.act_name(stem.act)], blobs=[_f32(stem.conv.weight), scale, shift]))
    for i, b in enumerate(net.blocks):
        name = f"blocks.{i}"
        h = x if b.expand is None else lo.conv(x, b.expand, f"{name}.expand")
        h = lo.conv(h, b.dw, f"{name}.dw")
        if b.se is not None:
            r, e = b.se.reduce, b.se.expand
            h = lo.add(Op(SE, f"{name}.se", h, cout=r.out_channels,
                          blobs=[_f32(r.weight), _f32(r.bias), _f32(e.weight), _f32(e.bias)]))
        x = lo.conv(h, b.project, f"{name}.project", res=x if b.residual else NONE)
    for h in space.head_layers():
        x = lo.add(Op(POOL, "pool", x)) if h is None else lo.conv(x, getattr(net, h.name), h.name)
    c = net.classifier
    lo.add(Op(LINEAR, "classifier", x, cout=c.out_features, blobs=[_f32(c.weight), _f32(c.bias)]))
    ops = lo.fuse()
    for op in ops:  # a depthwise conv's weights as the kernels read them, [k*k][c]
        if op.type == DWCONV:
            op.blobs[0] = op.blobs[0].reshape(-1, op.k * op.k).T.reshape(-1)
    return ops


# --- writing --------------------------------------------------------------------------------

def _blob_bytes(kind: int, array, bits: int = 0) -> tuple[bytes, int]:
    if kind == TEXT:
        return array, len(array)
    if kind == CODES:
        return pack(torch.from_numpy(np.ascontiguousarray(array, np.int8)), bits).numpy().tobytes(), array.size
    return np.ascontiguousarray(array, "<f4").tobytes(), array.size


def encode(ops: list[Op], in_shape: tuple[int, int, int], num_classes: int, meta: dict) -> bytes:
    """The file's bytes for `ops` (lowered, or read back and changed: tests build hostile files so)."""
    blobs, records = [], []

    def blob(kind, array, bits=0):
        blobs.append(_blob_bytes(kind, array, bits) + (kind,))
        return len(blobs) - 1

    meta_blob = blob(TEXT, json.dumps(meta, sort_keys=True).encode())
    for op in ops:
        ids = [blob(CODES if j == 0 and op.type in (CONV1X1, DWCONV) else F32, a, op.wbits)
               for j, a in enumerate(op.blobs)]
        ids += [NONE] * (4 - len(ids))
        step, qn, qp = op.out or (0.0, 0, 0)
        records.append(OP.pack(op.type, op.inp, op.res, int(op.out is not None), op.cout, op.k, op.stride,
                               op.act, op.wbits, step, qn, qp, blob(TEXT, op.name.encode()), *ids, 0, 0, 0))
    offset = _align(HEADER_BYTES + OP.size * len(records) + BLOB.size * len(blobs))
    table, data = [], bytearray()
    for raw, count, kind in blobs:
        table.append(BLOB.pack(offset + len(data), len(raw), kind, count))
        data += raw + bytes(_align(len(raw)) - len(raw))
    body_end = offset + len(data)
    head = HEADER.pack(MAGIC, VERSION, *in_shape, num_classes, len(records), len(blobs), meta_blob, body_end + 4)
    out = bytearray(head + bytes(HEADER_BYTES - len(head)))
    out += b"".join(records) + b"".join(table)
    out += bytes(offset - len(out)) + data
    return bytes(out + struct.pack("<I", zlib.crc32(out)))


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def to_bytes(net: Subnet) -> bytes:
    """`net` (eval-mode semantics, BN final) as the bytes of a runtime model file."""
    r = net.arch.r
    return encode(lower(net), (net.space.in_channels, r, r), net.space.num_classes,
                  {"format": "oqat-runtime", "arch": net.arch.to_str(), "space": net.space.name,
                   "bits": list(net.bits) if isinstance(net.bits, tuple) else net.bits})


def write(net: Subnet, path: str) -> None:
    """`net` as a runtime model file at `path`, atomically."""
    data = to_bytes(net)
    io.atomic_write(path, lambda f: f.write(data))


# --- reading and checking -------------------------------------------------------------------

def read(path: str) -> ModelFile:
    with open(path, "rb") as f:
        return decode(f.read())


def decode(data: bytes) -> ModelFile:
    """The file's ops, every rule the C reader holds a file to checked (a FormatError says which)."""
    def need(ok, what):
        if not ok:
            raise FormatError(f"runtime model file: {what}")

    need(len(data) >= HEADER_BYTES + 4, f"truncated ({len(data)} bytes)")
    magic, version, in_c, in_h, in_w, ncls, n_ops, n_blobs, meta_blob, size = HEADER.unpack_from(data)
    need(magic == MAGIC, "not an oqat runtime model (bad magic)")
    need(version == VERSION, f"version {version}, this reader reads {VERSION}")
    need(size == len(data), f"truncated or padded: header says {size} bytes, file has {len(data)}")
    need(data[36:40] == bytes(4) and data[HEADER.size:HEADER_BYTES] == bytes(HEADER_BYTES - HEADER.size),
         "header reserved bytes not zero")
    need(struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4]), "checksum mismatch (damaged)")
    need(1 <= in_c <= MAX_IN_CHANNELS and 1 <= in_h <= MAX_SIDE and 1 <= in_w <= MAX_SIDE, "bad input shape")
    need(1 <= ncls <= MAX_CHANNELS, "bad class count")
    need(1 <= n_ops <= MAX_OPS and n_blobs <= 8 * MAX_OPS, "bad op or blob count")
    table = HEADER_BYTES + OP.size * n_ops
    data_start = table + BLOB.size * n_blobs
    need(data_start <= len(data) - 4, "tables past the end")
    blobs = [BLOB.unpack_from(data, table + BLOB.size * i) for i in range(n_blobs)]
    for offset, nbytes, kind, _ in blobs:
        need(offset % ALIGN == 0 and data_start <= offset and nbytes <= len(data) - 4 - offset, "blob out of bounds")
        need(kind in (F32, CODES, TEXT), f"unknown blob kind {kind}")

    def blob(i, kind, count, bits=0):
        need(i < n_blobs, f"blob index {i} out of range")
        offset, nbytes, k, n = blobs[i]
        need(k == kind and n == count, f"blob {i}: kind {k}, {n} items; expected kind {kind}, {count}")
        want = {F32: 4 * count, TEXT: count, CODES: (count * code_width(bits) + 7) // 8 if bits else -1}[kind]
        need(nbytes == want, f"blob {i}: {nbytes} bytes, expected {want}")
        raw = data[offset:offset + nbytes]
        if kind == TEXT:
            return raw.decode("utf-8", "replace")
        if kind == F32:
            return np.frombuffer(raw, "<f4").astype(np.float32)
        qn, qp = qrange(bits, signed=True)
        codes = np.frombuffer(raw, np.uint8).copy()
        q = unpack(torch.from_numpy(codes), (count,), bits).numpy()
        need(q.max(initial=qn) <= qp, f"blob {i}: weight code out of range")
        return q

    def text_blob(i):
        need(i < n_blobs and blobs[i][2] == TEXT and blobs[i][3] <= MAX_NAME, f"blob {i} is not a short text")
        return blob(i, TEXT, blobs[i][3])

    meta = {}
    if meta_blob != NONE:  # what wrote the file, for people: the runtime reads none of it
        need(meta_blob < n_blobs and blobs[meta_blob][2] == TEXT, "metadata blob out of range")
        text = blob(meta_blob, TEXT, blobs[meta_blob][3])
        try:
            meta = json.loads(text)
        except json.JSONDecodeError:
            meta = {"text": text}
    shapes, kinds, ops = [(in_h, in_w, in_c)], [F32], []
    for i in range(n_ops):
        f = dict(zip(OP_FIELDS, OP.unpack_from(data, HEADER_BYTES + OP.size * i)))
        t, where = f["type"], f"op {i}"
        need(t in OP_NAMES, f"{where}: unknown type {t}")
        where = f"op {i} ({OP_NAMES[t]})"
        need(f["reserved0"] == f["reserved1"] == f["reserved2"] == 0, f"{where}: reserved fields not zero")
        need(f["inp"] <= i and (f["inp"] == 0) == (t == STEM), f"{where}: bad input value {f['inp']}")
        h, w, c = shapes[f["inp"]]
        in_kind = kinds[f["inp"]]
        need(in_kind == (np.uint8 if t in (CONV1X1, DWCONV) else F32), f"{where}: input of the wrong type")
        need(f["act"] in ACTS.values() and (f["act"] == 0 or t in (STEM, CONV1X1, DWCONV)), f"{where}: bad act")
        cout, k, s, bits = f["cout"], f["k"], f["stride"], f["wbits"]
        used = {STEM: ("cout", "k", "stride"), CONV1X1: ("cout", "wbits"), DWCONV: ("k", "stride", "wbits"),
                SE: ("cout",), LINEAR: ("cout",)}.get(t, ())
        for field in ("cout", "k", "stride", "wbits"):
            need((f[field] != 0) == (field in used), f"{where}: field {field} {'missing' if field in used else 'set'}")
        need(1 <= cout <= MAX_CHANNELS or not cout, f"{where}: bad channel count")
        need(k % 2 == 1 and k <= MAX_K or not k, f"{where}: bad kernel")
        need(s <= MAX_STRIDE and bits <= 8, f"{where}: bad stride or bits")
        out = None
        if f["out_u8"] == 1:
            step, qn, qp = f["out_step"], f["out_qn"], f["out_qp"]
            need(t != LINEAR and np.isfinite(step) and step > 0 and -128 <= qn <= 0 < qp and qp - qn <= 255,
                 f"{where}: bad output quantizer")
            out = (float(step), qn, qp)
        else:
            zero_step = struct.pack("<f", f["out_step"]) == bytes(4)
            need(f["out_u8"] == 0 and zero_step and f["out_qn"] == f["out_qp"] == 0 and t != QUANT,
                 f"{where}: bad output type")
        res = NONE
        if f["res"] != NONE:
            need(t == CONV1X1 and f["res"] <= i and f["res"] > 0 and kinds[f["res"]] == F32 and shapes[f["res"]] ==
                 (h, w, cout), f"{where}: bad residual")
            res = f["res"]
        op = Op(t, text_blob(f["name"]) if f["name"] != NONE else "", f["inp"], res, cout, k, s, f["act"], bits, out)
        n_blobs_of = {STEM: 3, CONV1X1: 3, DWCONV: 3, SE: 4, LINEAR: 2}.get(t, 0)
        ids = [f[f"blob{j}"] for j in range(4)]
        need(all(b == NONE for b in ids[n_blobs_of:]), f"{where}: unused blob set")
        if t == STEM:
            op.blobs = [blob(ids[0], F32, cout * c * k * k), blob(ids[1], F32, cout), blob(ids[2], F32, cout)]
            h, w, c = (h - 1) // s + 1, (w - 1) // s + 1, cout
        elif t == CONV1X1:
            op.blobs = [blob(ids[0], CODES, cout * c, bits), blob(ids[1], F32, cout), blob(ids[2], F32, cout)]
            c = cout
        elif t == DWCONV:
            op.blobs = [blob(ids[0], CODES, k * k * c, bits), blob(ids[1], F32, c), blob(ids[2], F32, c)]
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
        elif t == SE:
            op.blobs = [blob(ids[0], F32, cout * c), blob(ids[1], F32, cout), blob(ids[2], F32, c * cout),
                        blob(ids[3], F32, c)]
        elif t == POOL:
            h = w = 1
        elif t == LINEAR:
            need(h == w == 1, f"{where}: input not pooled")
            op.blobs = [blob(ids[0], F32, cout * c), blob(ids[1], F32, cout)]
            c = cout
        shapes.append((h, w, c))
        kinds.append(np.uint8 if out else F32)
        ops.append(op)
    last = ops[-1]
    need(last.type == LINEAR and last.out is None and last.cout == ncls, "the last op must be the classifier")
    return ModelFile((in_c, in_h, in_w), ncls, meta, ops, shapes)
