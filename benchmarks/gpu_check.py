"""GPU readiness: every check a first CUDA run needs, in one run of under 5 minutes on one GPU.

1. lsq: the quantizer on the GPU (float32 and bf16 input, with and without the folded
   h_swish, 4/2/1 bits, signed and unsigned, channels-last) equals its closed form in
   float64, forward and backward, and returns bf16 for bf16 input (no float32 round trip).
2. bf16 fp net: a bf16-autocast sandwich step of the 32-bit mbv3 supernet (batch 32, r128)
   against the same step in true float32 (TF32 off): logits per subnet and gradients per
   tensor, the logits first centred and spread so that they are far from uniform.
3. bf16 4-bit net: the same for the 4-bit supernet (steps set from data): finite gradients of
   the fp32 step's size. Its logits are reported, not judged: a 4-bit net at init is chaotic
   (rounding only its input to bf16 moves its fp32 logits as far), so no tolerance could tell.
4. throughput: images/s and peak memory of `Trainer.train_step` (its 4-subnet sandwich,
   all-reduce (none with one process), host syncs and the host-to-device copy) at r224,
   batch 128: 4 and 32 bits, each with bf16 autocast and in float32.
5. ddp: with two or more GPUs, `Trainer.run` under torchrun (env://, NCCL), one rank per GPU,
   each on its own data, ends with identical weights on every rank.

    python benchmarks/gpu_check.py             # on the GPU machine; docs/gpu.md says what to expect
    python benchmarks/gpu_check.py --dry-run   # every code path on CPU at tiny sizes

Every check runs whatever the others did; a failure prints `FAIL: <check>: <error>` (its
traceback on stderr) and the summary names failed and skipped checks. Exit status 0 when
none failed, 1 when one did, 2 when no CUDA GPU can be used (the line says why).
"""
import argparse
import contextlib
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's oqat, installed or not; torchrun's ranks run this file too

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from oqat.config.settings import ExperimentConfig  # noqa: E402
from oqat.core import distributed, typed  # noqa: E402
from oqat.data.batches import train_batches  # noqa: E402
from oqat.nets.supernet import Supernet  # noqa: E402
from oqat.quant.lsq import lsq, qrange  # noqa: E402
from oqat.space.builtin import MBV3, MINI  # noqa: E402
from oqat.space.structure import SearchSpace  # noqa: E402
from oqat.train.trainer import Trainer, sandwich_step  # noqa: E402


@dataclass(frozen=True)
class Plan:
    device: str
    space: SearchSpace
    data: tuple[str, ...]  # synthetic-data overrides giving the space's input size, channels and classes
    lsq_shape: tuple[int, ...]
    bf16_batch: int
    bf16_r: int
    batch: int  # throughput and DDP (global) batch; the throughput's resolution is the space's largest
    steps: int  # timed throughput steps per configuration
    ddp_steps: int


GPU = Plan("cuda", MBV3, ("data.synthetic_size=224", "data.synthetic_channels=3", "data.synthetic_classes=1000"),
           (8, 32, 16, 16), 32, 128, 128, 10, 3)
DRY = Plan("cpu", MINI, (), (2, 8, 5, 5), 4, 24, 4, 1, 2)

# bf16 against float32 on the 32-bit net at init. bf16 keeps 8 significant bits and a fresh
# net amplifies them: on CPU, mbv3 at batch 8, r128 is off by up to 18% in its (centred)
# logits with a median gradient cosine of 0.91 (mini, batch 16: 8%, 0.97); images given
# each other's logits are off by over 150%.
LOGITS_RTOL = 0.3
MEDIAN_COSINE = 0.8
NORM_RATIO = (0.5, 2.0)  # the 4-bit net's median gradient norm, bf16 over float32


class Skipped(Exception):
    """A check this machine cannot run; the summary names it."""


def cuda_problem() -> str | None:
    """None when CUDA can be used, else one line saying why not."""
    build = f"torch {torch.__version__}"
    if torch.version.cuda is None:
        return f"{build} is a CPU-only build (torch.version.cuda is None): install a CUDA build of torch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an old driver is a warning here; init() raises it as the reason
        try:
            torch.cuda.init()
            if torch.cuda.device_count():
                return None
            reason = "no device visible (CUDA_VISIBLE_DEVICES?)"
        except Exception as err:
            reason = " ".join(str(err).split())
    return f"no usable CUDA GPU: {build} built for CUDA {torch.version.cuda} sees " \
           f"{torch.cuda.device_count()} devices: {reason}"


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --- 1. the quantizer ----------------------------------------------------------------

def quarter_step_input(shape, bits: int, signed: bool, a: float, hardswish: bool, gen) -> torch.Tensor:
    """float64 v whose v/|s| (after h_swish) lies a quarter step from every rounding and
    clipping boundary, below Qn and above Qp too: rounding v, h_swish(v) or v/|s| to bf16
    cannot move a level, so any dtype must give the closed form's levels exactly."""
    qn, qp = qrange(bits, signed)
    k = torch.randint(0 if hardswish else qn - 2, qp + 3, shape, generator=gen)
    h = (k + torch.where(torch.rand(shape, generator=gen) < 0.5, -0.25, 0.25)).double() * a
    if not hardswish:
        return h
    return torch.where(h >= 3, h, (torch.sqrt(9 + 24 * h) - 3) / 2)  # h_swish's inverse (h >= -0.375 here)


def closed_form(v: torch.Tensor, s: float, g: torch.Tensor, bits: int, signed: bool, hardswish: bool,
                dtype: torch.dtype):
    """LSQ written out in float64 from the tensors a quantizer of `dtype` sees: (v_hat,
    dL/dv, dL/ds, the size of dL/ds: the root sum of squares of its terms)."""
    qn, qp = qrange(bits, signed)
    a = abs(s)
    h = F.hardswish(v).to(dtype).double() if hardswish else v
    x = h / a
    inside = (x > qn) & (x < qp)
    q = x.clamp(qn, qp)
    q = q.sign() if signed and bits == 1 else q.round()
    dh = torch.where(v < -3, 0.0, torch.where(v <= 3, v / 3 + 0.5, 1.0)) if hardswish else 1.0
    terms = torch.where(inside, g * (q - x), g * q)
    scale = math.copysign(1.0, s) / math.sqrt(v.numel() * qp)
    return q * a, torch.where(inside, g, 0.0) * dh, terms.sum().item() * scale, terms.norm().item() * abs(scale)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double().cpu() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check_lsq(device: str, shape=(8, 32, 16, 16)) -> str:
    """bf16 is checked with steps of +-1/4, exact in bf16, and quarter-step inputs: what is
    left is v_hat's rounding to bf16 (2^-9), so 1e-2 catches any wrong level or gradient;
    bf16's effect on training is what the network checks measure."""
    gen = torch.Generator().manual_seed(0)
    worst = {}
    for dtype, steps, rtol in ((torch.float32, (0.3, -0.3), 1e-6), (torch.bfloat16, (0.25, -0.25), 1e-2)):
        for hardswish in (False, True):
            for bits in (4, 2, 1):
                for signed in (True, False):
                    for s in steps:
                        v = quarter_step_input(shape, bits, signed, abs(s), hardswish, gen).to(dtype)
                        g = torch.randn(shape, generator=gen).to(dtype)
                        vd = v.to(device).contiguous(memory_format=torch.channels_last).requires_grad_()
                        sd = torch.tensor([s], device=device, requires_grad=True)
                        out = lsq(vd, sd, bits, signed, hardswish=hardswish)
                        case = (f"{dtype} input{', h_swish' if hardswish else ''}, {bits} bits, "
                                f"{'signed' if signed else 'unsigned'}, step {s}")
                        if out.dtype != dtype:
                            raise AssertionError(f"{case}: v_hat is {out.dtype}, a round trip through memory")
                        out.backward(g.to(device).contiguous(memory_format=torch.channels_last))
                        want_out, want_gv, want_gs, size = closed_form(v.double(), s, g.double(), bits, signed,
                                                                       hardswish, dtype)
                        errors = (relative(out.detach(), want_out), relative(vd.grad, want_gv),
                                  abs(sd.grad.item() - want_gs) / size)
                        worst[dtype] = max(worst.get(dtype, 0.0), *errors)
                        if max(errors) > rtol:
                            raise AssertionError(f"{case}: differs from the closed form on {device}: relative "
                                                 f"errors (v_hat, dv, ds) = {', '.join(f'{e:.1e}' for e in errors)}")
    return (f"LSQ on {device} = closed form for float32 (worst relative error {worst[torch.float32]:.1e}) and "
            f"bf16 input (worst {worst[torch.bfloat16]:.1e}, bf16 out), with and without folded h_swish")


# --- 2, 3. bf16 against float32 ------------------------------------------------------

@contextlib.contextmanager
def exact_float32():
    """float32 as float32: cuDNN convs default to TF32 (10-bit mantissa), matmuls may too."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def batch(space: SearchSpace, n: int, r: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, space.in_channels, r, r, generator=gen)
    y = torch.randint(0, space.num_classes, (n,), generator=gen)
    return x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)


def sandwich(space: SearchSpace, r: int) -> list:
    """The Trainer's sandwich at resolution r: largest, smallest and two random subnets."""
    rng = random.Random(0)
    return [replace(a, r=r) for a in (space.largest(), space.smallest(), space.sample(rng), space.sample(rng))]


def relative_norm(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def bf16_vs_float32(device: str, space: SearchSpace, bits: int, n: int, r: int) -> dict:
    """One sandwich step in bf16 autocast and one in float32 from the same weights: logits'
    relative error per subnet, cosine and norm ratio of the gradients per tensor (the
    steps' scalar gradients as one vector), and the fp32 logits' error when only the input is
    rounded to bf16 (how chaotic the net is)."""
    x, y = batch(space, n, r, device)
    torch.manual_seed(0)
    net = Supernet(space, bits).to(device).to(memory_format=torch.channels_last).train()
    net.dropout.p = 0.0  # dropout masks need not be drawn alike for bf16 and float32 tensors
    with exact_float32(), torch.no_grad():
        if bits != 32:
            net.init_steps_(x)
        # A fresh net's logits are near-uniform (a loss of about ln(classes) whatever the
        # features) and mostly the same for every image: centred over the batch and spread to
        # std 4, they differ where the features do.
        logits = net(x)
        net.classifier.weight.mul_(4.0 / (logits - logits.mean(0)).std())
        net.classifier.bias.sub_(net(x).mean(0))
        chaos = relative_norm(net(x.to(torch.bfloat16).float()), net(x))
    runs = []
    for amp in (False, True):
        logits = []
        hook = net.register_forward_hook(lambda module, args, out, into=logits: into.append(out.detach().float()))
        net.zero_grad(set_to_none=True)
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp)
        with exact_float32():
            sandwich_step(net, sandwich(space, r), x, y, autocast=autocast)
        hook.remove()
        runs.append((logits, {k: p.grad.float() for k, p in net.named_parameters() if p.grad is not None}))
    (logits32, grads32), (logits16, grads16) = runs

    def flat(grads: dict, names: list) -> torch.Tensor:  # a gradient bf16 lost counts as zeros
        return torch.cat([grads.get(k, torch.zeros_like(grads32[k])).flatten() for k in names])
    scalars = [k for k, g in grads32.items() if g.numel() == 1]
    groups = {k: [k] for k in grads32 if k not in scalars} | ({"steps": scalars} if scalars else {})
    pairs = {k: (flat(grads32, names), flat(grads16, names)) for k, names in groups.items()}
    pairs = {k: (a, b) for k, (a, b) in pairs.items() if a.norm() > 0}
    return {"logits": [relative_norm(b, a) for a, b in zip(logits32, logits16)], "chaos": chaos,
            "nonfinite": [k for k, g in grads16.items() if not torch.isfinite(g).all()],
            "cosine": {k: F.cosine_similarity(a, b, 0).item() for k, (a, b) in pairs.items()},
            "norm_ratio": {k: (b.norm() / a.norm()).item() for k, (a, b) in pairs.items()}}


def describe(c: dict) -> str:
    worst = min(c["cosine"], key=c["cosine"].get)
    return (f"logits off by {', '.join(f'{e:.1%}' for e in c['logits'])} (per subnet; fp32 logits off by "
            f"{c['chaos']:.1%} from the input's rounding alone), gradient cosine median "
            f"{statistics.median(c['cosine'].values()):.3f}, worst {c['cosine'][worst]:.3f} ({worst}), "
            f"norm ratio median {statistics.median(c['norm_ratio'].values()):.3f} over {len(c['cosine'])} tensors")


def check_bf16_fp(device: str, space: SearchSpace, n: int, r: int) -> str:
    c = bf16_vs_float32(device, space, 32, n, r)
    if c["nonfinite"]:
        raise AssertionError(f"non-finite bf16 gradients in {len(c['nonfinite'])} tensors, e.g. {c['nonfinite'][0]}")
    if max(c["logits"]) > LOGITS_RTOL or statistics.median(c["cosine"].values()) < MEDIAN_COSINE:
        raise AssertionError(f"bf16 off float32 beyond {LOGITS_RTOL:.0%} in logits or under cosine "
                             f"{MEDIAN_COSINE}: {describe(c)}")
    return f"32-bit {space.name}, batch {n}, r{r}, bf16 against float32: {describe(c)}"


def check_bf16_quant(device: str, space: SearchSpace, n: int, r: int) -> str:
    c = bf16_vs_float32(device, space, 4, n, r)
    if c["nonfinite"]:
        raise AssertionError(f"non-finite bf16 gradients in {len(c['nonfinite'])} tensors, e.g. {c['nonfinite'][0]}")
    ratio = statistics.median(c["norm_ratio"].values())
    if not NORM_RATIO[0] <= ratio <= NORM_RATIO[1]:
        raise AssertionError(f"bf16 gradients {ratio:.2f}x the size of float32's: {describe(c)}")
    return f"4-bit {space.name}, batch {n}, r{r}, bf16 against float32: {describe(c)}"


# --- 4, 5. the Trainer ---------------------------------------------------------------

def trainer(plan: Plan, folder: str, bits: int, amp: bool, steps: int, d: distributed.Dist) -> Trainer:
    """A Trainer of plan.space on synthetic data of `steps` batches, the sandwich at the largest resolution."""
    val = 8
    cfg = typed.load(ExperimentConfig, None, [
        f"run.dir={folder}", "run.quiet=true", f"model.space={plan.space.name}", "data.name=synthetic",
        *plan.data, f"data.batch_size={plan.batch}", f"data.val_size={val}", "data.synthetic_test=0",
        f"data.synthetic_train={plan.batch * steps + val}", f"train.bits={bits}", f"train.amp={amp}",
        "train.epochs=1", "train.calib_images=8", "train.elastic=[ks, e, d]"])
    return Trainer(cfg, d)


def throughput(plan: Plan) -> str:
    """The configurations interleaved step by step, so that machine noise hits them alike;
    step i draws the same subnets in each. The median step counts."""
    device = torch.device(plan.device)
    cuda = device.type == "cuda"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (4, 32):
            for amp in (True, False):
                t = trainer(plan, tmp, bits, amp, 1, distributed.Dist(0, 1, device))
                runs[f"{bits:>2}-bit {'bf16' if amp else 'fp32'}"] = t
        x, y = next(train_batches(t.splits.train, t.cfg.data, 0))
        times, peaks = {name: [] for name in runs}, {name: 0 for name in runs}
        for i in range(plan.steps + 1):  # the first round warms up
            for name, t in runs.items():
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                sync(plan.device)
                start = time.perf_counter()
                xd, yd = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if i == 0 and t.cfg.train.bits != 32:
                    t.init_steps(xd)
                t.step = i
                t.train_step(xd, yd).tolist()
                sync(plan.device)
                if i:
                    times[name].append(time.perf_counter() - start)
                if cuda:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
    step = {name: statistics.median(ts) for name, ts in times.items()}
    lines = [f"{name}: {plan.batch / s:6.0f} img/s ({s * 1e3:.0f} ms/step)"
             + (f", peak {peaks[name] / 2**30:.1f} GiB" if cuda else "") for name, s in step.items()]
    ratio = {p: step[f" 4-bit {p}"] / step[f"32-bit {p}"] for p in ("bf16", "fp32")}
    r = plan.space.largest().r
    return (f"Trainer.train_step of {plan.space.name} at r{r}, batch {plan.batch}, {len(t.archs(0))} subnets per "
            f"step, median of {plan.steps}:\n    " + "\n    ".join(lines)
            + f"\n    4-bit / 32-bit step time: bf16 {ratio['bf16']:.2f}x, fp32 {ratio['fp32']:.2f}x")


def ddp_worker(plan: Plan, folder: str) -> None:
    """One torchrun rank: `Trainer.run` over plan.ddp_steps batches, then rank 0 writes
    whether every rank ends with the same weights and whether they moved."""
    d = distributed.init()
    t = trainer(plan, os.path.join(folder, "run"), 4, True, plan.ddp_steps, d)
    initial = torch.cat([p.detach().reshape(-1).float() for p in t.net.parameters()])
    distributed.broadcast_([initial], d.world)  # run() starts from rank 0's weights
    t.run()
    flat = torch.cat([p.detach().reshape(-1).float() for p in t.net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(d.world)]
    dist.all_gather(gathered, flat)
    if d.main:
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        with open(os.path.join(folder, "result"), "w") as f:
            f.write(f"{int(same)} {int(not torch.equal(flat, initial))} {t.step}")
    dist.barrier()  # no rank leaves while another still talks to it
    sys.stdout.flush()
    # gloo's teardown can abort a rank whose work is done ("terminate called without an
    # active exception", about 1 run in 4 in CI): every rank has passed the barrier.
    os._exit(0)


def check_ddp(plan: Plan, dry_run: bool) -> str:
    world = 2 if dry_run else torch.cuda.device_count()
    if world < 2:
        raise Skipped("one GPU; DDP needs two")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               os.path.abspath(__file__), "--ddp-worker", tmp] + (["--dry-run"] if dry_run else [])
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if dry_run else None  # gloo on CPU, GPUs or not
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
        if run.returncode:
            output = run.stdout + run.stderr
            sys.stderr.write(output)
            # torchrun ends with its own summary; a rank's exception is the news
            raised = [line for line in output.splitlines() if re.match(r"[\w.]+(Error|Exception): ", line)]
            raise RuntimeError(f"torchrun exited with {run.returncode}: {(raised or output.splitlines() or [''])[0]}")
        same, moved, steps = map(int, open(os.path.join(tmp, "result")).read().split())
    backend = "gloo" if dry_run else "NCCL"
    if not (same and moved):
        raise AssertionError(f"{world} {backend} ranks after {steps} steps: weights "
                             f"{'identical' if same else 'differ between ranks'}, "
                             f"{'changed' if moved else 'unchanged (nothing trained)'}")
    return f"{world} {backend} ranks (torchrun, env://) end Trainer.run's {steps} steps with identical weights"


# --- the run -------------------------------------------------------------------------

def run_checks(checks: list) -> int:
    failed, skipped, start = [], [], time.perf_counter()
    for name, check in checks:
        began = time.perf_counter()
        try:
            result = check()
            print(f"ok: {name} ({time.perf_counter() - began:.0f} s): {result}", flush=True)
        except Skipped as why:
            skipped.append(f"{name} ({why})")
            print(f"skip: {name}: {why}", flush=True)
        except Exception as err:
            failed.append(name)
            print(f"FAIL: {name}: {type(err).__name__}: {' '.join(str(err).split())}", flush=True)
            traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what a failed check held (an out-of-memory) is the next one's
    passed = len(checks) - len(failed) - len(skipped)
    print(f"summary: {passed} of {len(checks)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; skipped: {', '.join(skipped)}" if skipped else "")
          + f"; {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every check on CPU at tiny sizes: no GPU needed")
    p.add_argument("--steps", type=int, help=f"timed throughput steps per configuration (default {GPU.steps})")
    p.add_argument("--ddp-worker", metavar="DIR", help=argparse.SUPPRESS)  # a torchrun rank of the ddp check
    args = p.parse_args(argv)
    plan = DRY if args.dry_run else GPU
    if args.steps:
        plan = replace(plan, steps=args.steps)
    if args.ddp_worker:
        ddp_worker(plan, args.ddp_worker)
    if not args.dry_run and (problem := cuda_problem()):
        print(f"gpu_check: {problem}; nothing checked")
        return 2
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) \
        if plan.device == "cuda" else "CPU, tiny sizes (--dry-run)"
    print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} "
          f"GPU(s); running on {devices}", flush=True)
    return run_checks([
        ("lsq", lambda: check_lsq(plan.device, plan.lsq_shape)),
        ("bf16 fp net", lambda: check_bf16_fp(plan.device, plan.space, plan.bf16_batch, plan.bf16_r)),
        ("bf16 4-bit net", lambda: check_bf16_quant(plan.device, plan.space, plan.bf16_batch, plan.bf16_r)),
        ("throughput", lambda: throughput(plan)),
        ("ddp", lambda: check_ddp(plan, args.dry_run)),
    ])


if __name__ == "__main__":
    sys.exit(main())
