"""Where the thread count changes a quantized subnet's codes, source by source, and what the
exact evaluation (oqat/nets/exact.py, the rule of oqat/quant/requant.py) leaves of it.

For each subnet (extracted from a supernet file, BN recalibrated, evaluated on val) it runs the
arithmetic before issue 29 (the fake-quantized float forward in eval mode, BN recalibrated by
that forward) at 1 and at 2 threads, then makes one source after another order-free, cumulatively:
BN recalibration (exact integer statistics), the stem (float64), SE and the global pooling
(float64), the classifier (float64), the quantized convs' sums (exact on codes; BN eval and
activations still torch's modules), and last the exact path itself (epilogue by the rule). Each
row: val top-1 at 1 and 2 threads, and per quantized conv the fraction of input codes (on the
first val batch) that differ between the thread counts. --isa also runs the exact path in
subprocesses under ATEN_CPU_CAPABILITY=avx2 and the default and compares their codes and logits;
--speed times evaluation (recalibration + val) before and after, interleaved, in CPU time.

    python benchmarks/thread_codes.py SUPERNET --arch ARCH [--arch ARCH ...] [--isa] [--speed]
    python benchmarks/thread_codes.py --tiny     (a random 2- and 4-bit mini subnet, synthetic data)
"""
import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from oqat.core import machine
from oqat.data.batches import calib_batches, eval_batches
from oqat.data.config import DataConfig
from oqat.data.splits import load_splits, subset
from oqat.files.checkpoints import load_supernet
from oqat.nets import exact, layers, subnet
from oqat.nets.calibrate import inputs, recalibrate_bn
from oqat.nets.layers import QConv2d
from oqat.nets.packed import quantized_convs
from oqat.nets.supernet import Supernet
from oqat.quant import requant
from oqat.quant.lsq import qrange
from oqat.space.builtin import MINI

STEPS = ("before", "+ BN recalibration exact", "+ stem fp64", "+ SE, pooling fp64", "+ classifier fp64",
         "+ conv sums exact", "exact path (after)")


class FloatPath(nn.Module):
    """The subnet's forward before issue 29 (training's float forward, run in eval mode)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.arch = net, net.arch

    def forward(self, x):
        return subnet.head_forward(self.net, self.net.blocks(self.net.stem(x)))


def _exact_qconv(conv: QConv2d):
    """conv's qconv with its sum taken exactly on the codes of its quantized input and weight."""
    fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] ** 2
    bound = requant.sum_bound(fan_in, qrange(conv.aq.bits, conv.aq.signed), qrange(conv.wq.bits, True))

    def qconv(x, weight, groups, act=None):
        s_a, s_w = conv.aq.step.abs(), conv.wq.step.abs()
        q, w = torch.round(conv.aq(x, act) / s_a), torch.round(conv.wq(weight) / s_w)
        return requant.integer_conv(q, w, conv.stride[0], groups, bound) * (s_a * s_w)
    return qconv


def _se64(x, w_reduce, b_reduce, w_expand, b_expand):
    y = requant.reduce64(F.conv2d, requant.mean_pool(x), w_reduce, b_reduce).clamp_min_(0)
    return x * requant.gate(requant.reduce64(F.conv2d, y, w_expand, b_expand))


@contextlib.contextmanager
def order_free(net: nn.Module, step: int):
    """The float path with the first `step` sources after "before" made order-free."""
    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, obj.__dict__.get(name, getattr(obj, name)), name in obj.__dict__))
        setattr(obj, name, value)
    if step >= 2:
        c = net.stem.conv
        patch(c, "forward", lambda x: requant.reduce64(F.conv2d, x, c.weight, None, c.stride, c.padding))
    if step >= 3:
        patch(layers, "se_forward", _se64)
        patch(subnet, "pool", requant.mean_pool)
    if step >= 4:
        lin = net.classifier
        patch(lin, "forward", lambda x: requant.reduce64(F.linear, x, lin.weight, lin.bias))
    if step >= 5:
        for conv in quantized_convs(net).values():
            patch(conv, "qconv", _exact_qconv(conv))
    try:
        yield
    finally:
        for obj, name, value, own in reversed(saved):
            if own:
                setattr(obj, name, value)
            else:
                delattr(obj, name)


@contextlib.contextmanager
def recorded_codes(net: nn.Module, out: list, n: int):
    """Append each quantized conv's input codes (of the first n images, int8), in forward order, to `out`."""
    def keep(q):
        out.append(q[:n].to(torch.int8))
        return q

    def hook(lsq, args, y):
        keep(torch.round(y / lsq.step.abs()))
    hooks = [conv.aq.register_forward_hook(hook) for conv in quantized_convs(net).values()]
    codes = requant.codes
    exact.requant.codes = lambda y, *args: keep(codes(y, *args))
    try:
        yield
    finally:
        exact.requant.codes = codes
        for h in hooks:
            h.remove()


def measure(supernet, arch, calib, val, step: int, codes_images: int) -> dict:
    """top1, logits and the codes of each quantized conv (on the first `codes_images` val images,
    int8) of one step, at this process's thread count."""
    net = supernet.extract(arch, keep_bn=True).eval()
    float_path = step < len(STEPS) - 1
    recalibrate_bn(net if step >= 1 else FloatPath(net), calib)
    model = FloatPath(net) if float_path else net
    codes, logits = [], []
    with torch.inference_mode(), order_free(net, step if float_path else 0):
        for i, (x, _) in enumerate(val):
            with recorded_codes(net, codes, codes_images) if i == 0 else contextlib.nullcontext():
                logits.append(model(inputs(net, x, arch.r)).float())
    logits = torch.cat(logits)
    labels = torch.cat([y for _, y in val])
    return {"top1": 100.0 * (logits.argmax(1) == labels).double().mean().item(), "codes": codes, "logits": logits,
            "names": list(quantized_convs(net))}


def child(argv: list[str], env: dict, path: str, step: int) -> dict:
    """`measure` of every --arch at `step` in a fresh process under `env` (its thread count
    and ISA are fixed when torch starts), read back from `path`."""
    subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--step", str(step), "--dump", path],
                   env=dict(os.environ, **env), check=True)
    return torch.load(path)


def compare(name: str, one: dict, two: dict, per_conv: bool) -> None:
    diffs = [100.0 * (a != b).double().mean().item() for a, b in zip(one["codes"], two["codes"])]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    print(f"  {name:<26} {one['top1']:.2f} / {two['top1']:.2f}  codes differ: mean {statistics.mean(diffs):.3f}%, "
          f"{sum(d > 0 for d in diffs)}/{len(diffs)} convs, worst {diffs[worst]:.3f}% ({one['names'][worst]}); "
          f"logits equal: {torch.equal(one['logits'], two['logits'])}")
    if per_conv and any(diffs):
        print("    % per conv: " + " ".join(f"{d:.2f}" for d in diffs))


def speed(supernet, arch, calib, val, repeats: int) -> None:
    """CPU time of recalibration + evaluation, before and after, interleaved."""
    def run(step):
        start = time.process_time()
        measure(supernet, arch, calib, val, step, 0)
        return time.process_time() - start
    times = {0: [], len(STEPS) - 1: []}
    for i in range(repeats + 1):
        for step in (list(times) if i % 2 == 0 else list(times)[::-1]):
            t = run(step)
            if i:
                times[step].append(t)
    before, after = (statistics.median(t) for t in times.values())
    print(f"  speed at {torch.get_num_threads()} thread(s): before {before * 1e3:.0f} CPU ms, after {after * 1e3:.0f}, "
          f"ratio {after / before:.3f} (best {min(times[len(STEPS) - 1]) / min(times[0]):.3f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("supernet", nargs="?")
    p.add_argument("--arch", action="append", default=[])
    p.add_argument("--calib", type=int, default=1000)
    p.add_argument("--val", type=int, default=5000)
    p.add_argument("--codes-images", type=int, default=100, help="val images whose codes are compared")
    p.add_argument("--isa", action="store_true")
    p.add_argument("--speed", type=int, default=0, metavar="REPEATS")
    p.add_argument("--tiny", action="store_true", help="in this process, thread counts by torch.set_num_threads")
    p.add_argument("--step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.tiny:
        cfg = DataConfig(name="synthetic", val_size=64, synthetic_train=200, eval_batch_size=32)
        splits = load_splits(cfg)
        calib = calib_batches(splits.train, cfg, 64, 0)
        nets = []
        for bits in (2, 4):
            torch.manual_seed(0)
            sn = Supernet(MINI.with_data(splits.in_channels, splits.num_classes), bits).eval()
            sn.init_steps_(torch.cat([x for x, _ in calib]))
            nets.append((sn, MINI.largest()))
    else:
        supernet, ckpt = load_supernet(args.supernet)
        cfg = ckpt["data"]
        splits = load_splits(cfg)
        calib = calib_batches(splits.train, cfg, min(args.calib, len(splits.train)), 0)
        nets = [(supernet, supernet.space.check(a)) for a in args.arch]
    val = list(eval_batches(subset(splits.val, min(args.val, len(splits.val)), 0), cfg))
    if args.dump:  # a child: one step of every arch
        torch.save([measure(sn, a, calib, val, args.step, args.codes_images) for sn, a in nets], args.dump)
        return
    print(f"machine: {machine.summary()}; ISA {torch.backends.cpu.get_cpu_capability()}; calib "
          f"{sum(len(x) for x, _ in calib)}, val {sum(len(x) for x, _ in val)} images, codes compared on "
          f"{args.codes_images}; thread counts {'by set_num_threads' if args.tiny else 'by OMP_NUM_THREADS'}")
    isas = ["default"] + (["avx2"] if args.isa and not args.tiny else [])
    rows = {}  # (step, threads, isa) -> [measure of each net]
    with tempfile.TemporaryDirectory() as tmp:
        for isa in isas:
            for step in range(len(STEPS)):
                for threads in (1, 2):
                    if args.tiny:
                        torch.set_num_threads(threads)
                        rows[step, threads, isa] = [measure(sn, a, calib, val, step, args.codes_images)
                                                    for sn, a in nets]
                        continue
                    env = {"OMP_NUM_THREADS": str(threads)} | ({"ATEN_CPU_CAPABILITY": isa} if isa != "default" else {})
                    rows[step, threads, isa] = child(argv, env, os.path.join(tmp, "dump.pt"), step)
    for i, (sn, arch) in enumerate(nets):
        for isa in isas:
            print(f"\n{arch} at {sn.bits} bits, ISA {isa}: val top-1 at 1 / 2 threads; "
                  "% of codes differing between them")
            for step, name in enumerate(STEPS):
                compare(name, rows[step, 1, isa][i], rows[step, 2, isa][i], per_conv=step == 0)
        if len(isas) > 1:
            print("  across ISAs: default / avx2 at 1 thread")
            for step, name in enumerate(STEPS):
                compare(name, rows[step, 1, "default"][i], rows[step, 1, "avx2"][i], per_conv=step == 0)
        if args.speed:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                speed(sn, arch, calib, val, args.speed)


if __name__ == "__main__":
    main()
