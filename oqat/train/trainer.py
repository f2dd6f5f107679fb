"""Supernet training: one stage at one bit-width (docs/method.md, "Training").

A step is the sandwich rule: the largest subnet learns from the labels, the smallest and
`sandwich_random` random subnets from the largest's soft predictions (in-place
distillation), or all of them from a fixed teacher's (`train.teacher_file`); gradients add up
over the subnets, then one SGD step. The step's
resolution and random subnets come from a generator seeded by (seed, step) and the data
order from (seed, epoch, batch), so a run resumed from `last.pt` replays exactly the
steps an uninterrupted run takes.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import random
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config.settings import ExperimentConfig, check_inputs
from ..core import distributed, faults, io, typed
from ..data.arrays import ArrayDataset
from ..data.batches import eval_batches, num_train_batches, train_batches
from ..data.splits import Splits, load_splits
from ..files import checkpoints
from ..files.architectures import read_arch
from ..files.layout import TrainingLayout
from ..files.records import MetricsWriter
from ..nets.supernet import Supernet
from ..quant.lsq import FULL_PRECISION, check_precision, guard_steps_, set_bits_, step_values, steps_of
from ..quant.precision import Precision
from ..space.arch import Arch
from ..space.builtin import get_space
from ..space.structure import SearchSpace
from .evaluate import evaluate, prepare_subnet, resize
from .inherit import REINIT_KEY


class DivergedError(ValueError):
    """The loss went non-finite; the message names the step and the subnet."""


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps (never zero), then cosine to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only. Not on BN, biases or steps (as OFA),
    nor on the kernel-transform matrices, which start at identity: decay would pull every
    smaller kernel toward zero."""
    decay = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ids = {id(p) for p in decay}
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": [p for p in net.parameters() if id(p) not in ids], "weight_decay": 0.0}]


def keep_freed_memory() -> None:
    """On glibc, keep freed memory in the process instead of handing it back to the OS. A CPU
    training step frees and re-allocates the same activation-sized blocks every step; glibc
    unmaps blocks over its mmap threshold (32 MB at most) and trims the heap's free top, so
    each step page-faults them back in, zeroing every page: 20-25% of a 4-bit mbv3 step on
    CPU (benchmarks/quant_step.py). Process-wide, so a program that trains on the CPU sets it
    where it starts (`keep_freed_memory_on_cpu`), never the library; a no-op elsewhere."""
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(-4, 0)  # M_MMAP_MAX: serve every allocation from the heap
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD (an int): trim only past 2 GB free


def keep_freed_memory_on_cpu() -> None:
    """keep_freed_memory if this process trains on the CPU (`distributed.device`): for a
    program that trains (`oqat train`, `oqat run`) to call where it starts."""
    if distributed.device().type == "cpu":
        keep_freed_memory()


def sandwich_step(net: Supernet, archs: list[Arch], x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.1,
                  distill: bool = True, autocast=contextlib.nullcontext(),
                  targets: torch.Tensor | None = None) -> torch.Tensor:
    """Forward and backward of each subnet in `archs` on x, gradients adding up: the first
    learns from the labels, the others from its soft predictions (in-place distillation)
    or, without `distill`, from the labels too; given a teacher's soft predictions
    `targets`, every subnet learns from those. Returns the per-subnet losses."""
    losses, soft = [], targets
    for arch in archs:
        net.set_arch(arch)
        with autocast:
            logits = net(x)
            loss = (F.cross_entropy(logits, y, label_smoothing=label_smoothing) if soft is None
                    else F.cross_entropy(logits.float(), soft))
        if distill and soft is None:
            soft = logits.detach().float().softmax(1)
        loss.backward()
        losses.append(loss.detach().float())
    return torch.stack(losses)


class Teacher:
    """The soft predictions every subnet of a stage learns from: the network a finished
    supernet file trained (its largest subnet, e.g. the full-precision stage's teaching the
    2-bit one; the one architecture of a standalone training, `train.arch`), fixed and in
    eval mode. In-memory images without augmentation are the same at every step, so their
    predictions are computed once, in one pass over the training split (seconds), and looked
    up by image; other data runs the teacher on each batch."""

    def __init__(self, path: str, splits: Splits, data_cfg, student: SearchSpace, device: torch.device,
                 channels_last: bool):
        net, ckpt = checkpoints.load_supernet(path)
        if (net.space.in_channels, net.space.num_classes) != (student.in_channels, student.num_classes):
            raise ValueError(f"train.teacher_file '{path}' is for {net.space.in_channels}-channel, "
                             f"{net.space.num_classes}-class data; this run's data has {student.in_channels} "
                             f"channels, {student.num_classes} classes")
        net.set_arch(trained_arch(net, ckpt, path))
        self.net = net.eval().to(device)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.layout)
        self.table = None
        if isinstance(splits.train, ArrayDataset) and not data_cfg.augment:
            self.table = torch.cat([self.predict(x.to(device)) for x, _ in eval_batches(splits.train, data_cfg)])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = resize(x, self.net.arch.r).contiguous(memory_format=self.layout)
        return self.net(x).float().softmax(1)

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The teacher's predictions for the training batch x, whose images are `index` in the split."""
        return self.predict(x) if self.table is None else self.table[index.to(self.table.device)]


def trained_arch(net: Supernet, ckpt: dict, path: str) -> Arch:
    """The architecture a supernet file's training taught: its `train.arch` if it trained
    one alone (a baseline), else the largest."""
    run = ckpt.get("config")
    arch = run.get("train", {}).get("arch") if isinstance(run, dict) and isinstance(run.get("train"), dict) else None
    if arch is None:
        return net.space.largest()
    try:
        return read_arch(arch, net.space)
    except (ValueError, TypeError) as err:
        raise ValueError(f"'{path}': its config's train.arch {arch!r} is not an architecture of its space: "
                         f"{err}") from None


class Trainer:
    """One training stage; `run()` trains to the end (resuming from last.pt if there is one)."""

    def __init__(self, cfg: ExperimentConfig, dist: distributed.Dist | None = None):
        self.cfg, self.dist, t = cfg, dist or distributed.Dist(), cfg.train
        self.layout = TrainingLayout(cfg.run.dir)
        self.last = self.layout.last
        torch.manual_seed(t.seed)  # same on every rank: identical init and dropout draws
        self.splits = load_splits(cfg.data)
        space = get_space(cfg.model.space).with_data(self.splits.in_channels, self.splits.num_classes)
        self.net, self.reinit = self._build(space)
        self.space = self.net.space
        self.trained = self.net.trained_space
        self.fixed = read_arch(t.arch, self.space) if t.arch else None
        self.net.to(self.dist.device)
        if t.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(param_groups(self.net, t.weight_decay), lr=t.lr, momentum=t.momentum,
                                   nesterov=t.momentum > 0)
        self.per_epoch = num_train_batches(self.splits.train, cfg.data, self.dist.world)
        if self.per_epoch == 0:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the "
                             f"{len(self.splits.train)} training images")
        warm, total = round(t.warmup * self.per_epoch), t.epochs * self.per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, warm, total))
        self.step = 0  # the one counter (batches trained): the epoch and the batch within it derive from it
        self.health = {"step_clamps": 0, "step_flips": 0}
        self.meter = [0.0, 0.0, 0]  # epoch sums: largest's loss, mean distillation loss, steps
        self.val: dict = {}
        self.autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16,
                                       enabled=t.amp and self.dist.device.type == "cuda")
        self.teacher = None if t.teacher_file is None else \
            Teacher(t.teacher_file, self.splits, cfg.data, self.space, self.dist.device, t.channels_last)

    @property
    def epoch(self) -> int:
        """The epoch in progress (0-based), or the epochs finished at an epoch's end."""
        return self.step // self.per_epoch

    @property
    def batch(self) -> int:
        """The next batch of the epoch in progress."""
        return self.step % self.per_epoch

    def _build(self, space) -> tuple[Supernet, bool]:
        """The supernet to train, varying this stage's `train.elastic`, and whether its steps are
        to be set from data."""
        t = self.cfg.train
        if t.init_from is None:
            return Supernet(space, t.bits, t.elastic), True
        net, ckpt = checkpoints.load_supernet(t.init_from, checkpoints.SUPERNET, checkpoints.TRAINING)
        net.set_elastic_(t.elastic)  # the file's are what the stage before varied
        if net.space.with_bits(()) != space:
            raise ValueError(f"train.init_from '{t.init_from}' holds a '{net.space.name}' supernet for "
                             f"{net.space.in_channels}-channel, {net.space.num_classes}-class data; this run "
                             f"is '{space.name}' on {space.in_channels} channels, {space.num_classes} classes")
        bits = check_precision(t.bits)
        if isinstance(net.bits, tuple) and net.bits != bits:
            raise ValueError(f"train.init_from '{t.init_from}' is a {Precision.of(net.bits)} supernet; "
                             f"this stage trains {Precision.of(bits)}")
        if isinstance(bits, tuple):  # steps carried from the file's own, where it has them (see inherit.mixed_file)
            has_steps = net.bits != FULL_PRECISION and not ckpt.get(REINIT_KEY, False)
            if net.bits != bits:
                net.to_mixed_(bits)
        else:
            has_steps = ckpt["bits"] == bits and not ckpt.get(REINIT_KEY, False)
            set_bits_(net, bits)
        return net, t.reinit_steps or not has_steps

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end of the stage, resuming from last.pt if there is one: per batch one
        sandwich step (LSQ steps set from data before the first), a log line every `log_every`
        steps and a checkpoint every `checkpoint_every`; per epoch, BN statistics averaged
        over ranks, validation and a checkpoint; at the end supernet.pt. Returns the final
        metrics."""
        t, world, main = self.cfg.train, self.dist.world, self.dist.main
        resumed = self.resume()
        distributed.broadcast_([p.data for p in self.net.parameters()]
                               + [b for b in self.net.buffers() if b.is_floating_point()], world)
        log = RunLog(self.layout.root, self.step, resumed) if main else None
        if main:
            typed.dump(self.cfg, self.layout.config)
        try:
            for epoch in range(self.epoch, t.epochs):
                self.net.train()
                start, first = self.batch, self.step
                bar = tqdm(total=self.per_epoch, initial=start, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                           disable=self.cfg.run.quiet or not main, dynamic_ncols=True)
                tick, seen = time.perf_counter(), 0
                # Image folders crop each batch straight to its step's resolution, as the authors do.
                batches = train_batches(self.splits.train, self.cfg.data, epoch, self.dist.rank, world, start,
                                        sizes=lambda b: self.archs(first + b - start)[0].r,  # noqa: B023 (this epoch's)
                                        with_index=True)
                for batch, (x, y, index) in enumerate(batches, start):
                    x, y = x.to(self.dist.device, non_blocking=True), y.to(self.dist.device, non_blocking=True)
                    if self.step == 0 and self.reinit and t.bits != FULL_PRECISION:
                        self.init_steps(x)
                    lr = self.opt.param_groups[0]["lr"]
                    losses = self.train_step(x, y, None if self.teacher is None else self.teacher(x, index)).tolist()
                    self.step += 1
                    seen += len(y) * world
                    distill = sum(losses[1:]) / max(1, len(losses) - 1)
                    self.meter = [self.meter[0] + losses[0], self.meter[1] + distill, self.meter[2] + 1]
                    bar.update(1)
                    if self.step % t.log_every == 0 or batch + 1 == self.per_epoch:
                        rate = seen / (time.perf_counter() - tick)
                        tick, seen = time.perf_counter(), 0
                        bar.set_postfix(loss=f"{losses[0]:.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.0f}")
                        if log:
                            log.write({"kind": "step", "step": self.step,
                                       "epoch": epoch + (batch + 1) / self.per_epoch, "loss": losses[0],
                                       "loss_distill": distill, "lr": lr, "img_s": rate, **self.health})
                    if main and t.checkpoint_every and self.step % t.checkpoint_every == 0 \
                            and batch + 1 < self.per_epoch:  # an epoch's end saves after its validation
                        self.save()
                bar.close()
                # Ranks saw different data: average BN running stats so rank 0's file stands for all.
                distributed.all_reduce_mean_([b for b in self.net.buffers() if b.is_floating_point()], world)
                loss, distill, n = self.meter
                self.meter = [0.0, 0.0, 0]
                if main:
                    self.val = self.validate()
                    self._report_epoch(log, loss / max(n, 1), distill / max(n, 1))
                    self.save()
            final = {"epoch": self.epoch, "step": self.step, **self.health, **self.val}
            if main:
                self.check_finite()
                checkpoints.save_supernet(self.net, self.layout.supernet, {
                    "data": typed.to_dict(self.cfg.data), "config": typed.to_dict(self.cfg), "val": final})
            return final
        finally:
            if log:
                log.close()

    def _report_epoch(self, log: RunLog, loss: float, distill: float) -> None:
        log.write({"kind": "epoch", "epoch": self.epoch, "step": self.step, "loss": loss, "loss_distill": distill,
                   "lr": self.opt.param_groups[0]["lr"], **self.val, **self.health})
        flips = f", step sign flips {self.health['step_flips']}, clamps {self.health['step_clamps']}" \
            if any(self.health.values()) else ""
        vals = "  ".join(f"{k.removeprefix('val_top1_')} {v:.2f}" for k, v in self.val.items()
                         if k.startswith("val_top1_"))
        tqdm.write(f"epoch {self.epoch}/{self.cfg.train.epochs}  step {self.step}  loss {loss:.4f}  "
                   f"val top-1 {vals}{flips}")

    # --- one step -------------------------------------------------------------------------
    @torch.no_grad()
    def init_steps(self, x: torch.Tensor) -> None:
        """LSQ init at the stage start (the supernet's `init_steps_` on the first batch at
        the largest resolution), averaged over ranks."""
        with self.autocast:
            self.net.init_steps_(self._input(x, self.space.largest().r))
        distributed.all_reduce_mean_([p.data for p in steps_of(self.net)], self.dist.world)

    def _input(self, x: torch.Tensor, r: int) -> torch.Tensor:
        x = resize(x, r)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    def archs(self, step: int) -> list:
        """The sandwich of `step`: largest, smallest, then n random, all at one drawn resolution,
        from the part of the space this stage trains (fields not in `train.elastic` keep the
        largest's value: progressive shrinking). A subnet that occurs twice (e.g. largest =
        smallest when nothing is elastic) runs once."""
        t = self.cfg.train
        if t.arch:
            return [self.fixed]
        rng, space = random.Random(f"oqat-train/{t.seed}/{step}"), self.trained
        r = rng.choice(space.resolutions)
        drawn = [space.sample(rng) for _ in range(t.sandwich_random)]
        archs = [self.space.check(replace(a, r=r)) for a in [space.largest(), space.smallest(), *drawn]]
        return list(dict.fromkeys(archs))

    def train_step(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """One sandwich step (on a teacher's soft `targets` if given); returns the per-subnet
        losses (averaged over ranks)."""
        t = self.cfg.train
        archs = self.archs(self.step)
        self.opt.zero_grad(set_to_none=True)
        losses = sandwich_step(self.net, archs, self._input(x, archs[0].r), y, t.label_smoothing, t.distill,
                               self.autocast, targets)
        params = [p for p in self.net.parameters() if p.grad is not None]
        # One collective for gradients and losses: a NaN on any rank reaches every rank.
        distributed.all_reduce_mean_([p.grad for p in params] + [losses], self.dist.world)
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            raise DivergedError(f"training diverged: non-finite loss at step {self.step} in subnet "
                                f"{archs[int(bad[0])]} ({Precision.of(t.bits)}); {self._advice()}")
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)  # parameters, not their grads: it reads p.grad
        before = step_values(self.net)
        self.opt.step()
        self.sched.step()
        clamps, flips = guard_steps_(self.net, before)
        self.health["step_clamps"] += clamps
        self.health["step_flips"] += flips
        return losses

    # --- validation and checkpoints ------------------------------------------------------
    def validate(self) -> dict:
        """Val top-1 of the largest and smallest subnet this stage trains, each after BN recalibration."""
        out, largest, smallest = {}, self.trained.largest(), self.trained.smallest()
        named = [("arch", self.fixed)] if self.cfg.train.arch else \
            [("largest", largest)] + ([("smallest", smallest)] if smallest != largest else [])
        for name, arch in named:
            sub = prepare_subnet(self.net, arch, self.cfg.data, self.splits, self.cfg.train.calib_images,
                                 self.cfg.data.seed)
            with self.autocast:
                res = evaluate(sub, eval_batches(self.splits.val, self.cfg.data, arch.r), arch.r)
            out[f"val_top1_{name}"], out[f"val_loss_{name}"] = res["top1"], res["loss"]
        return out

    def _advice(self) -> str:
        # A resumed run keeps the optimizer's lr: a lower one needs a fresh run.dir.
        kept = f" (the last good checkpoint is '{self.last}')" if os.path.exists(self.last) else ""
        return f"try a lower lr (this stage's is {self.cfg.train.lr:g}) or train.grad_clip, in a new run.dir{kept}"

    def check_finite(self) -> None:
        """Refuse to save non-finite weights (an optimizer step can overflow on a finite
        loss): resuming, searching or exporting from them would only spread NaN."""
        bad = [k for k, v in self.net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise DivergedError(f"training diverged: non-finite weights after step {self.step} "
                                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); {self._advice()}")

    def save(self) -> None:
        faults.pause_point("checkpoint")
        self.check_finite()
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoints.save_training(
            self.last, space=self.space, bits=self.cfg.train.bits, config=typed.to_dict(self.cfg),
            state_dict=self.net.state_dict(), optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
            step=self.step, rng=rng, health=dict(self.health),
            meter=list(self.meter), val=dict(self.val))

    def resume(self) -> bool:
        if not os.path.exists(self.last):
            return False
        ck = checkpoints.load_training(self.last)
        saved, wanted = Precision.of(ck["bits"]), Precision.of(self.cfg.train.bits)
        if saved != wanted or ck["space"] != self.space.to_dict():
            raise io.CheckpointError(
                f"'{self.last}' is a {saved} '{ck['space']['name']}' run, this config trains "
                f"{wanted} '{self.space.name}'; use another run.dir")
        checkpoints.load_state(self.net, ck["state_dict"], self.last)
        try:
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
        except (ValueError, KeyError, TypeError) as err:
            raise io.CheckpointError(f"'{self.last}': optimizer or scheduler state does not fit "
                                             f"this run ({type(err).__name__}: {err})") from None
        self.step = ck["step"]
        random.setstate(ck["rng"]["python"])
        torch.set_rng_state(ck["rng"]["torch"])
        if "cuda" in ck["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        self.health, self.meter, self.val = ck["health"], ck["meter"], ck["val"]
        return True


class RunLog:
    """metrics.jsonl and TensorBoard events of rank 0. On resume, entries past the resumed
    step (written after the last checkpoint by the killed run) are dropped from both, and so
    is a last line that a crash cut short (it has no newline)."""

    def __init__(self, folder: str, step: int, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter
        os.makedirs(folder, exist_ok=True)
        self.metrics = MetricsWriter(TrainingLayout(folder).metrics, step if resumed else None)
        self.tb = SummaryWriter(TrainingLayout(folder).tb, purge_step=step + 1 if resumed else None)

    def write(self, record: dict) -> None:
        self.metrics.append(record)
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        self.metrics.close()
        self.tb.close()


def train(cfg: ExperimentConfig) -> dict:
    """Train one stage as `cfg` says (resuming from `run.dir`); returns the final metrics.
    Under torchrun, every rank calls this; only rank 0 writes files."""
    check_inputs(cfg)  # before any process group or data is set up
    with distributed.group() as dist:
        final = Trainer(cfg, dist).run()
        distributed.barrier(dist)  # the other ranks return once rank 0 has written supernet.pt
        return final
