"""Every oqat file format, written and read in one place, and every file oqat reads.

    supernet file (oqat-supernet)       save_supernet, load_supernet; open_supernet adds its run's data
    subnet file (oqat-subnet)           save_subnet, load_subnet
    any network a user hands over       load_model (also an export folder), subnet_arch (the subnet
                                        an architecture chooses in it): export, latency, eval, the API
    training checkpoint (oqat-train)    save_training, load_training
    packed weights (oqat-packed)        save_packed, load_packed (the encoding: `oqat.nets.packed`)
    the authors' checkpoints            load_oqa_checkpoint

The JSON files of a run (metrics, search results, export facts, latency tables, pairs) are
written and read in `oqat.files.records`.

Each writer sits beside its loader, so the fields one writes are the fields the other checks.
A checkpoint is written atomically and read with torch.load(weights_only=True): no arbitrary
unpickling (`oqat.core.io`). Then every field is checked: its type, the space (as a typed
config), the bits, and the state dict against the network the file describes (missing,
unexpected and mis-shaped keys, all of them in one message; non-finite values), before any
network takes the weights. So a wrong, truncated or foreign file ends in one CheckpointError
line naming the file and what is wrong, and the caller has written nothing yet.
"""
import os
import random
import zipfile

import torch
from torch import nn

from ..core import io, typed
from ..core.io import CheckpointError, load as read, read_torch
from ..data.config import DataConfig
from ..data.splits import Splits, load_splits
from ..nets.oqa import oqa_key
from ..nets.packed import pack, quantized_convs, unpack, weight_codes
from ..nets.subnet import Subnet
from ..nets.supernet import Supernet
from ..quant.lsq import Bits, check_precision
from ..space.arch import Arch
from ..space.builtin import MBV3
from ..space.structure import ARCH_FIELDS, SearchSpace
from .architectures import read_arch
from .layout import ExportLayout, RunLayout

# Each file's "format" tag.
SUPERNET, SUBNET, TRAINING, PACKED = "oqat-supernet", "oqat-subnet", "oqat-train", "oqat-packed"


def _field(ckpt: dict, path: str, name: str, kind, what: str):
    if name not in ckpt:
        raise CheckpointError(f"'{path}' has no '{name}' field")
    value = ckpt[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"'{path}': field '{name}' must be {what}, got {type(value).__name__}")
    return value


def _space(ckpt: dict, path: str) -> SearchSpace:
    """The file's search space, every field type-checked; passed on, never added to the built-in ones."""
    try:
        return SearchSpace.from_dict(_field(ckpt, path, "space", dict, "a mapping"))
    except CheckpointError:
        raise
    except ValueError as err:
        raise CheckpointError(f"'{path}': {err}") from None


def _bits(ckpt: dict, path: str) -> Bits:
    """The network's bits: an integer, or the list of widths of a mixed-precision one."""
    bits = _field(ckpt, path, "bits", (int, list, tuple), "an integer or a list of integers")
    try:
        return check_precision(bits)
    except ValueError as err:
        raise CheckpointError(f"'{path}': {err}") from None


def _elastic(ckpt: dict, path: str) -> list:
    """The Arch fields the file's training varied (the supernet checks them): all of them where
    it does not say (the authors' checkpoints, files written before it was kept)."""
    if "elastic" not in ckpt:
        return list(ARCH_FIELDS)
    return _field(ckpt, path, "elastic", list, f"a list of Arch fields ({', '.join(ARCH_FIELDS)})")


def _arch(ckpt: dict, path: str, space: SearchSpace) -> Arch:
    try:
        return Arch.from_dict(_field(ckpt, path, "arch", dict, "a mapping"), space)
    except ValueError as err:
        raise CheckpointError(f"'{path}': {err}") from None


def _build(path: str, make):
    """The network a file describes; a space that validates but cannot be built is the file's fault."""
    try:
        return make()
    except (ValueError, TypeError, RuntimeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"'{path}': its network cannot be built: {text}") from None


def _listed(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def state_problems(state: dict, expected: dict, names: dict | None = None) -> list[str]:
    """What keeps `state` from loading into a module whose state dict is `expected`; keys
    of `state` are shown as `names` gives them (default: as they are)."""
    shown = (names or {}).get
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [shown(k, k) for k in state if k not in expected]
    common = [k for k in state if k in expected]
    shapes = [f"{shown(k, k)} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})" for k in common
              if tuple(state[k].shape) != tuple(expected[k].shape)]
    types = [f"{shown(k, k)} {state[k].dtype} (expected {expected[k].dtype})" for k in common
             if state[k].is_floating_point() != expected[k].is_floating_point()]
    bad = [shown(k, k) for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    problems = []
    for what, keys in (("missing {} keys", missing), ("unexpected {} keys", unexpected)):
        if keys:
            problems.append(f"{what.format(len(keys))} ({_listed(keys)})")
    for what, items in (("wrong shapes: ", shapes), ("wrong types: ", types), ("non-finite values in ", bad)):
        if items:
            problems.append(what + _listed(items))
    return problems


def _tensors(value, path: str, name: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise CheckpointError(f"'{path}': field '{name}' must map names to tensors")
    return value


def load_state(net: nn.Module, state, path: str) -> nn.Module:
    """`net` with the weights `state` of the file at `path`, once all of them are checked."""
    state = _tensors(state, path, "state_dict")
    problems = state_problems(state, net.state_dict())
    if problems:
        raise CheckpointError(f"'{path}': state_dict does not fit its network: " + "; ".join(problems))
    net.load_state_dict(state, strict=False)  # strict but for num_batches_tracked, which old files may lack
    return net


def _run_data(ckpt: dict, path: str) -> DataConfig | None:
    if ckpt.get("data") is None:
        return None
    try:
        return typed.from_dict(DataConfig, ckpt["data"], "data")
    except ValueError as err:
        raise CheckpointError(f"'{path}': {err}") from None


# --- supernets and subnets ---------------------------------------------------------------
def save_supernet(net: Supernet, path: str, extra: dict | None = None) -> None:
    """A supernet file of `net`: its space, bits, the Arch fields its training varied and its
    weights, plus `extra` (a run's "data", "config", "val", ...)."""
    io.save(path, {"format": SUPERNET, "space": net.space.to_dict(), "bits": net.bits,
                           "elastic": list(net.elastic), "state_dict": net.state_dict(), **(extra or {})})


def load_supernet(path: str, *formats: str) -> tuple[Supernet, dict]:
    """The supernet in a supernet file (or, if `formats` allows, a training checkpoint), in
    eval mode, and the file's fields, its "data" read as a DataConfig (None when absent)."""
    ckpt = read(path, *(formats or (SUPERNET,)))
    space, bits, elastic = _space(ckpt, path), _bits(ckpt, path), _elastic(ckpt, path)
    net = _build(path, lambda: Supernet(space, bits, elastic))
    load_state(net, ckpt.get("state_dict"), path)
    return net.eval(), {**ckpt, "data": _run_data(ckpt, path)}


def save_subnet(net: Subnet, path: str, extra: dict | None = None, *, data: DataConfig | None = None) -> None:
    """A subnet file of `net` (from `Supernet.extract`): its space, architecture, bits and weights,
    the data it was made for (`data`: its name and preprocessing, so that eval and export of the
    file need no --dataset), plus `extra`."""
    if not isinstance(net, Subnet):
        raise TypeError(f"save_subnet takes a Subnet (supernet.extract(arch, calib=...)), got {type(net).__name__}"
                        + ("; a supernet is saved with save_supernet" if isinstance(net, Supernet) else ""))
    kept = {"data": typed.to_dict(data)} if data is not None else {}
    io.save(path, {"format": SUBNET, "space": net.space.to_dict(), "arch": net.arch.to_dict(),
                           "bits": net.bits, "state_dict": net.state_dict(), **kept, **(extra or {})})


def load_subnet(path: str) -> Subnet:
    """The subnet in a subnet file, in eval mode."""
    return load_model(path, SUBNET)[0]


def load_model(source: str, *formats: str) -> tuple[Supernet | Subnet, dict]:
    """The network a user hands over (eval mode) and its file's fields, as `load_supernet`: a
    supernet, subnet or packed file (of `formats`, default any of them), or an export folder
    (its packed weights). A run folder is refused with the supernet files it holds."""
    path = _network_file(source)
    ckpt = read(path, *(formats or (SUPERNET, SUBNET, PACKED)))
    if ckpt["format"] == SUPERNET:
        return load_supernet(path)
    if ckpt["format"] == PACKED:
        return _packed_subnet(ckpt, path), {**ckpt, "data": _run_data(ckpt, path)}
    space, bits = _space(ckpt, path), _bits(ckpt, path)
    arch = _arch(ckpt, path, space)
    net = _build(path, lambda: Subnet(space, arch, bits))
    load_state(net, ckpt.get("state_dict"), path)
    return net.eval(), {**ckpt, "data": _run_data(ckpt, path)}


NETWORK_KINDS = "a supernet, subnet or packed file, or an export folder"


def _network_file(source: str) -> str:
    """`source`, or the packed weights of an export folder; any other folder, and a file of another
    kind (an export's model.onnx, a JSON file: not the zip torch.save writes), is refused."""
    if os.path.isfile(source) and not zipfile.is_zipfile(source):
        folder = os.path.dirname(source) or "."
        hint = (f"; pass its export folder '{folder}'" if os.path.isfile(ExportLayout(folder).packed)
                else "")
        raise ValueError(f"'{source}' is not a network file oqat writes (a torch zip){hint}; expected {NETWORK_KINDS}")
    if not os.path.isdir(source):
        return source
    if os.path.isfile(ExportLayout(source).packed):
        return ExportLayout(source).packed
    found = [s.supernet for s in RunLayout(source).stages() if os.path.isfile(s.supernet)]
    if found:
        raise ValueError(f"'{source}' is a run folder; pass one of its supernet files: {', '.join(found)}")
    exports = sorted(e.path for e in os.scandir(source) if os.path.isfile(ExportLayout(e.path).packed))
    if exports:
        raise ValueError(f"'{source}' holds export folders; pass one of them: {', '.join(exports[:6])}"
                         + (", ..." if len(exports) > 6 else ""))
    raise ValueError(f"'{source}' is a folder; expected {NETWORK_KINDS}")


def subnet_arch(net: Supernet | Subnet, arch, source: str) -> Arch:
    """The subnet `arch` (any form `read_arch` reads, or None) chooses in the network opened from
    `source`: a supernet needs one; a subnet is its own, which `arch`, if given, must be."""
    chosen = read_arch(arch, net.space) if arch is not None else None
    if isinstance(net, Supernet):
        if chosen is None:
            raise ValueError(f"'{source}' is a supernet: give --arch to choose the subnet")
        return chosen
    if chosen is not None and chosen != net.arch:
        raise ValueError(f"--arch {chosen} differs from the subnet in '{source}' ({net.arch})")
    return net.arch


def open_model(path: str, overrides=(), device: str = "cpu",
               *formats: str) -> tuple[Supernet | Subnet, dict, DataConfig, Splits]:
    """The network of a supernet file (or of `formats`), the file's fields, and its run's data
    (or the default data) with `overrides` (dotted DataConfig keys, e.g. root=/data) applied;
    the data must fit the network's input and classes."""
    net, ckpt = load_model(path, *(formats or (SUPERNET,)))
    if ckpt["data"] is None and not any(o.startswith("name=") for o in overrides):
        raise ValueError(f"'{path}' records no data: name it (--dataset, or the override name=...), or save "
                         "the file with its data (files.save_subnet(..., data=data_cfg))")
    cfg = typed.apply_overrides(ckpt["data"] or DataConfig(), overrides)
    splits = load_splits(cfg)
    space = net.space
    if (splits.in_channels, splits.num_classes) != (space.in_channels, space.num_classes):
        raise ValueError(f"data '{cfg.name}' has {splits.in_channels} channels and {splits.num_classes} classes; "
                         f"the network in '{path}' takes {space.in_channels} and {space.num_classes}")
    return net.to(device), ckpt, cfg, splits


def open_supernet(path: str, overrides=(), device: str = "cpu") -> tuple[Supernet, DataConfig, Splits]:
    """A supernet file with its run's data, as `open_model`."""
    net, _, cfg, splits = open_model(path, overrides, device)
    return net, cfg, splits


# --- training checkpoints --------------------------------------------------------------------
def save_training(path: str, *, space: SearchSpace, bits: Bits, config: dict, state_dict: dict,
                  optimizer: dict, scheduler: dict, step: int, rng: dict, health: dict,
                  meter: list, val: dict) -> None:
    """A training checkpoint: all a stage needs to go on exactly where it stopped (`train.Trainer`);
    `step` is the batches trained, from which the epoch and its next batch follow."""
    io.save(path, {"format": TRAINING, "space": space.to_dict(), "bits": bits, "config": config,
                           "state_dict": state_dict, "optimizer": optimizer, "scheduler": scheduler,
                           "step": step, "rng": rng, "health": health,
                           "meter": meter, "val": val})


def load_training(path: str) -> dict:
    """A training checkpoint (last.pt), every field checked; "state_dict" is left for the
    caller's network (`load_state` checks it against that)."""
    ckpt = read(path, TRAINING)
    _space(ckpt, path)
    _bits(ckpt, path)
    _tensors(_field(ckpt, path, "state_dict", dict, "a mapping"), path, "state_dict")
    for name in ("optimizer", "scheduler", "rng", "health", "val", "config"):
        _field(ckpt, path, name, dict, "a mapping")
    if _field(ckpt, path, "step", int, "an integer") < 0:  # older files' epoch and batch follow from it
        raise CheckpointError(f"'{path}': field 'step' must be >= 0, got {ckpt['step']}")
    meter = _field(ckpt, path, "meter", list, "a list")
    if len(meter) != 3 or not all(isinstance(v, (int, float)) for v in meter):
        raise CheckpointError(f"'{path}': field 'meter' must be 3 numbers")
    opt = ckpt["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        raise CheckpointError(f"'{path}': field 'optimizer' is not an optimizer state (state, param_groups)")
    rng = ckpt["rng"]
    try:
        random.Random().setstate(rng["python"])
        if not isinstance(rng["torch"], torch.Tensor) or rng["torch"].dtype != torch.uint8:
            raise TypeError("torch state must be a uint8 tensor")
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"'{path}': field 'rng' is not a saved RNG state ({err})") from None
    return ckpt


# --- packed weights ----------------------------------------------------------------------------
def save_packed(net: Subnet, path: str, extra: dict | None = None, *, data: DataConfig | None = None) -> None:
    """A packed file of `net` (its BN statistics final): each quantized conv's weight as its
    codes in its bits, everything else (`data` too) as in a subnet file, plus `extra`."""
    convs = quantized_convs(net)
    codes = _one_storage({name: pack(weight_codes(conv), conv.wq.bits) for name, conv in convs.items()})
    packed = {name: {"data": codes[name], "shape": list(conv.weight.shape), "bits": conv.wq.bits}
              for name, conv in convs.items()}
    skip = {f"{name}.weight" for name in convs}
    state = _one_storage({k: v for k, v in net.state_dict().items()
                          if k not in skip and not k.endswith("num_batches_tracked")})  # a counter eval never reads
    kept = {"data": typed.to_dict(data)} if data is not None else {}
    io.save(path, {"format": PACKED, "space": net.space.to_dict(), "arch": net.arch.to_dict(),
                           "bits": net.bits, "packed": packed, "state_dict": state, **kept, **(extra or {})})


def _one_storage(tensors: dict) -> dict:
    """The tensors as views of one storage per dtype: torch.save writes each storage as a zip
    entry of its own (about 150 bytes with headers and alignment), which made a small network's
    packed file larger than its ONNX graph."""
    out, by_dtype = {}, {}
    for key, t in tensors.items():
        by_dtype.setdefault(t.dtype, []).append(key)
    for keys in by_dtype.values():
        flat = torch.cat([tensors[k].reshape(-1) for k in keys])
        at = 0
        for k in keys:
            n = tensors[k].numel()
            out[k] = flat[at:at + n].view(tensors[k].shape)
            at += n
    return out


def load_packed(path: str) -> Subnet:
    """The subnet in a packed file, in eval mode, computing exactly what the saved one did."""
    return _packed_subnet(read(path, PACKED), path)


def _packed_subnet(ckpt: dict, path: str) -> Subnet:
    space, bits = _space(ckpt, path), _bits(ckpt, path)
    arch = _arch(ckpt, path, space)
    net = _build(path, lambda: Subnet(space, arch, bits))
    state = dict(_tensors(_field(ckpt, path, "state_dict", dict, "a mapping"), path, "state_dict"))
    entries = _field(ckpt, path, "packed", dict, "a mapping")
    convs = quantized_convs(net)
    if set(entries) != set(convs):
        raise CheckpointError(f"'{path}': packed weights do not match the architecture's "
                              f"{len(convs)} quantized convs")
    for name, entry in entries.items():
        if not (isinstance(entry, dict) and set(entry) == {"data", "shape", "bits"}
                and isinstance(entry["data"], torch.Tensor) and isinstance(entry["shape"], list)
                and isinstance(entry["bits"], int)):
            raise CheckpointError(f"'{path}': packed entry {name} must hold data (tensor), shape (list), bits (int)")
        if entry["bits"] != convs[name].wq.bits:
            raise CheckpointError(f"'{path}': {name} is packed at {entry['bits']} bits, "
                                  f"the network has {convs[name].wq.bits}")
        if entry["shape"] != list(convs[name].weight.shape):
            raise CheckpointError(f"'{path}': {name} is packed as {entry['shape']}, the network's weight is "
                                  f"{list(convs[name].weight.shape)}")
        step = state.get(f"{name}.wq.step")
        if step is None or step.numel() != 1:
            raise CheckpointError(f"'{path}': {name} has no weight step (state_dict key {name}.wq.step)")
        try:
            codes = unpack(entry["data"], tuple(entry["shape"]), entry["bits"])
        except CheckpointError as err:
            raise CheckpointError(f"'{path}': {name}: {err}") from None
        # The same float32 product q * |s| that the quantizer's forward computes.
        state[f"{name}.weight"] = codes.float() * step.abs()
    return load_state(net, state, path).eval()


# --- the authors' checkpoints ----------------------------------------------------------------
def load_oqa_checkpoint(path: str, bits: int, num_classes: int = 1000) -> Supernet:
    """An `mbv3` supernet at `bits`, in eval mode, from one of the authors' checkpoints
    (`torch.load(path)["state_dict"]` with OFA's key names, mapped by `oqa.oqa_key`)."""
    obj = read_torch(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' holds no state_dict of tensors")
    net = Supernet(MBV3.with_data(3, num_classes), bits)
    ours = net.state_dict()
    mapped, names, foreign = {}, {}, []
    for key, value in state.items():
        new = oqa_key(str(key))
        if new is None or new not in ours:
            foreign.append(str(key))
        else:
            mapped[new], names[new] = value, str(key)
    problems = state_problems(mapped, ours, names)  # named by the authors' keys, as their file holds them
    if foreign:
        problems.append(f"unexpected {len(foreign)} keys ({_listed(foreign)})")
    if problems:
        raise CheckpointError(f"'{path}' is not an OQA mbv3 checkpoint: " + "; ".join(problems))
    net.load_state_dict(mapped, strict=False)
    return net.eval()
