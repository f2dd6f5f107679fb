import copy
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from processes import paused, resume

from oqat.cli import main
from oqat.config.settings import ExperimentConfig
from oqat.core import io, typed
from oqat.core.io import CheckpointError
from oqat.data.batches import train_batches
from oqat.files import checkpoints
from oqat.files.records import last_epoch, read_metrics
from oqat.nets.layers import QConv2d
from oqat.nets.supernet import Supernet
from oqat.quant.lsq import STEP_EPS, guard_steps_, init_step, step_values
from oqat.space.builtin import get_space
from oqat.train.evaluate import resize
from oqat.train.trainer import RunLog, Trainer, lr_factor, param_groups, train

# 192 synthetic training images in batches of 16: 12 steps an epoch, a second or two on one core.
TINY = ["data.name=synthetic", "data.val_size=32", "data.synthetic_train=224", "data.batch_size=16",
        "data.eval_batch_size=64", "train.calib_images=32", "train.sandwich_random=1", "train.log_every=4"]


def tiny(tmp_path, *overrides) -> ExperimentConfig:
    return typed.load(ExperimentConfig, None, [*TINY, f"run.dir={tmp_path}", "run.quiet=true", *overrides])


def cli(*args, env=None, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "oqat", "train", *args, "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def weights(path) -> dict:
    return io.load(str(path), "oqat-supernet")["state_dict"]


@pytest.mark.slow
@pytest.mark.signals
def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    args = [*TINY, "train.epochs=2", "train.checkpoint_every=3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = cli(*args, f"run.dir={whole}")
    victim = cli(*args, f"run.dir={killed}", env={"OQAT_PAUSE_AT": "checkpoint"})
    last = killed / "checkpoints" / "last.pt"
    assert paused(victim)  # before the step-3 checkpoint
    resume(victim)
    assert paused(victim)  # before the step-6 one
    victim.kill()
    victim.wait()
    assert ref.wait(timeout=120) == 0, ref.stderr.read()
    state = io.load(str(last), "oqat-train")
    assert state["step"] == 3 and "epoch" not in state  # killed mid-epoch; the step says where (12 batches an epoch)
    assert not (killed / "supernet.pt").exists()
    resumed = cli(*args, f"run.dir={killed}")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    a, b = weights(whole / "supernet.pt"), weights(killed / "supernet.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The metrics of the killed run past its checkpoint were dropped: each step logged once.
    steps = [json.loads(line)["step"] for line in open(killed / "metrics.jsonl")
             if json.loads(line)["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 24
    saved = io.load(str(killed / "supernet.pt"), "oqat-supernet")
    assert saved["data"]["name"] == "synthetic" and saved["config"]["train"]["epochs"] == 2
    assert "val_top1_largest" in saved["val"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_bad_checkpoint_is_an_error_and_is_kept(tmp_path, damage):
    cfg = tiny(tmp_path, "train.epochs=1")
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    if damage == "foreign":
        checkpoints.save_supernet(Supernet(Trainer(cfg).space, 4), str(last))
    else:
        good = tmp_path / "good.pt"
        torch.save({"format": "oqat-train", "x": torch.zeros(1000)}, good)
        raw = good.read_bytes()
        last.write_bytes(b"not a checkpoint at all" if damage == "garbage" else raw[:len(raw) // 2])
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match="last.pt"):
        train(cfg)
    assert last.read_bytes() == before


def test_nonfinite_loss_stops_naming_step_and_subnet(tmp_path, capsys):
    code = main(["train", *TINY, f"run.dir={tmp_path}", "train.lr=1e30", "train.warmup=0",
                 "train.checkpoint_every=1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "non-finite loss at step" in err and "subnet mini:r" in err
    failed = int(err.split("at step ")[1].split()[0])
    kept = io.load(str(tmp_path / "checkpoints" / "last.pt"), "oqat-train")
    assert 0 < kept["step"] == failed  # the last good step's checkpoint
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_config_show_and_unknown_field(capsys):
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "sandwich_random: 2  #" in out and "space: mini  #" in out and "dir: runs/default  #" in out
    assert main(["train", "train.sandwhich_random=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'train.sandwhich_random'" in err and "sandwich_random" in err
    assert main(["train", "train.bits=9"]) == 2
    assert "bits" in capsys.readouterr().err


def test_the_commands_that_train_keep_freed_memory_on_cpu_and_the_trainer_does_not(tmp_path, monkeypatch):
    """keep_freed_memory changes the whole process's malloc: `oqat train` and `oqat run` (torchrun
    runs them too) set it where training runs on the CPU; the library leaves the process alone."""
    import oqat.core.distributed
    import oqat.run.pipeline
    import oqat.train.trainer

    calls = []
    monkeypatch.setattr(oqat.train.trainer, "keep_freed_memory", lambda: calls.append("keep"))
    monkeypatch.setattr(oqat.train.trainer, "train", lambda cfg: calls.append("train") or {})
    monkeypatch.setattr(oqat.run.pipeline, "run_pipeline", lambda cfg: calls.append("run"))
    monkeypatch.setattr(oqat.core.distributed, "device", lambda: torch.device("cpu"))
    assert main(["train", *TINY, f"run.dir={tmp_path / 'a'}", "--quiet"]) == 0
    assert main(["run", *TINY, f"run.dir={tmp_path / 'b'}", "--quiet"]) == 0
    assert calls == ["keep", "train", "keep", "run"]
    monkeypatch.setattr(oqat.core.distributed, "device", lambda: torch.device("cuda", 0))
    assert main(["train", *TINY, f"run.dir={tmp_path / 'c'}", "--quiet"]) == 0
    assert calls[4:] == ["train"]
    Trainer(tiny(tmp_path / "d"))
    assert len(calls) == 5


def test_step_init_weight_decay_groups_and_step_guard(tmp_path):
    t = Trainer(tiny(tmp_path))
    x, _ = next(iter(train_batches(t.splits.train, t.cfg.data, 0)))
    t.init_steps(x)
    qconvs = [m for m in t.net.modules() if isinstance(m, QConv2d)]
    conv = qconvs[3]
    assert torch.allclose(conv.wq.step, init_step(conv.weight, 4, True))
    assert all(q.aq.step.item() != 1.0 and not q.aq.init_pending for q in qconvs)
    decay, rest = param_groups(t.net, 4e-5)
    names = {id(p): n for n, p in t.net.named_parameters()}
    assert all(n.endswith("weight") and "bn" not in n for n in map(names.get, map(id, decay["params"])))
    assert any(n.endswith("step") for n in map(names.get, map(id, rest["params"])))
    assert rest["weight_decay"] == 0
    before = step_values(t.net)
    conv.wq.step.data.fill_(-1e-9)  # a flip through zero that would also collapse
    assert guard_steps_(t.net, before) == (1, 1)
    assert conv.wq.step.item() == pytest.approx(-STEP_EPS)


def test_grad_clip_bounds_the_global_gradient_norm(tmp_path, monkeypatch):
    t = Trainer(tiny(tmp_path, "train.grad_clip=0.01"))
    x, y = next(iter(train_batches(t.splits.train, t.cfg.data, 0)))
    seen = []
    monkeypatch.setattr(t.opt, "step", lambda: seen.append(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in t.net.parameters() if p.grad is not None]))))
    t.train_step(x, y)
    assert seen[0] == pytest.approx(0.01, rel=1e-3)  # clipped to the limit (the raw norm is far above it)


def test_reinit_semantics_and_lr_schedule(tmp_path):
    net = Supernet(Trainer(tiny(tmp_path / "a")).space, 4)
    checkpoints.save_supernet(net, str(tmp_path / "b4.pt"))
    assert not Trainer(tiny(tmp_path / "a", f"train.init_from={tmp_path / 'b4.pt'}")).reinit
    assert Trainer(tiny(tmp_path / "a", f"train.init_from={tmp_path / 'b4.pt'}", "train.bits=3")).reinit
    assert Trainer(tiny(tmp_path / "a", f"train.init_from={tmp_path / 'b4.pt'}",
                        "train.reinit_steps=true")).reinit
    assert Trainer(tiny(tmp_path / "a")).reinit
    assert lr_factor(0, 4, 20) == 0.25 and lr_factor(3, 4, 20) == 1.0 and lr_factor(20, 4, 20) == 0.0


def test_fixed_arch_trains_only_that_subnet(tmp_path):
    arch = "mini:r28:k5e3-k3e2.k3e2-k3e2-k7e4"
    result = train(tiny(tmp_path, f"train.arch={arch}", "train.bits=2", "train.epochs=1"))
    assert {k for k in result if k.startswith("val_top1_")} == {"val_top1_arch"}
    after = weights(tmp_path / "supernet.pt")
    torch.manual_seed(0)  # the trainer's seed: the same initial weights
    init = Supernet(get_space("mini"), 2).state_dict()
    # Stage 0 runs one block: its second block never gets a gradient, the first one learns.
    assert torch.equal(after["blocks.1.expand.conv.weight"], init["blocks.1.expand.conv.weight"])
    assert not torch.equal(after["blocks.0.expand.conv.weight"], init["blocks.0.expand.conv.weight"])


def test_each_step_is_a_sandwich_with_inplace_distillation(tmp_path):
    """The sandwich rule and in-place distillation, pinned: each step runs the largest, the
    smallest and `sandwich_random` random subnets, all at one drawn resolution; the largest
    learns from the (smoothed) labels, the others from its detached soft predictions; their
    gradients add up into one optimizer step. Checked against the same step written by hand."""
    cfg = tiny(tmp_path, "train.sandwich_random=2", "train.bits=32", "train.grad_clip=0",
               "train.channels_last=false")
    t = Trainer(cfg)
    space = t.space
    draws = [t.archs(step) for step in range(12)]
    for archs in draws:
        r = archs[0].r
        assert len(archs) == 4 and r in space.resolutions and all(a.r == r for a in archs)
        assert archs[0] == dataclasses.replace(space.largest(), r=r)
        assert archs[1] == dataclasses.replace(space.smallest(), r=r)
    assert len({a[0].r for a in draws}) > 1 and len({a[2] for a in draws}) > 1  # drawn anew per step
    assert t.archs(5) == draws[5]  # a pure function of (seed, step): resume replays it

    x, y = next(iter(train_batches(t.splits.train, cfg.data, 0)))
    ref = copy.deepcopy(t.net).train()
    seen, grads = [], {}
    t.net.register_forward_pre_hook(lambda net, inp: seen.append((net.arch, inp[0].shape[-1])))
    t.opt.register_step_pre_hook(lambda opt, *_: grads.update(
        {n: p.grad.clone() for n, p in t.net.named_parameters() if p.grad is not None}))
    archs = t.archs(t.step)
    torch.manual_seed(1)  # dropout draws, the same for both
    losses = t.train_step(x, y)
    assert seen == [(a, a.r) for a in archs]

    torch.manual_seed(1)
    xr = resize(x, archs[0].r)
    ref.set_arch(archs[0])
    big = ref(xr)
    expected = [F.cross_entropy(big, y, label_smoothing=cfg.train.label_smoothing)]
    expected[0].backward()
    soft = big.detach().softmax(1)
    for arch in archs[1:]:
        ref.set_arch(arch)
        expected.append(F.cross_entropy(ref(xr), soft))
        expected[-1].backward()
    assert torch.allclose(losses, torch.stack(expected).detach(), rtol=1e-5, atol=1e-6)
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert grads.keys() == want.keys()
    for name, g in want.items():
        assert torch.allclose(grads[name], g, rtol=1e-4, atol=1e-6), name
def test_a_teacher_teaches_every_subnet_of_the_sandwich(tmp_path):
    """With train.teacher_file every subnet, the largest too, learns from the fixed teacher's soft
    predictions (its largest subnet, eval mode); on in-memory images without augmentation
    they are computed once and looked up by image, the same as running the teacher."""
    space = get_space("mini").with_data(1, 10)
    torch.manual_seed(5)
    teacher = Supernet(space, 32)
    checkpoints.save_supernet(teacher, str(tmp_path / "teacher.pt"))
    cfg = tiny(tmp_path / "run", f"train.teacher_file={tmp_path / 'teacher.pt'}", "train.bits=32", "train.grad_clip=0",
               "data.augment=false")
    t = Trainer(cfg)
    assert t.teacher.table.shape == (len(t.splits.train), 10)
    x, y, index = next(iter(train_batches(t.splits.train, cfg.data, 0, with_index=True)))
    targets = t.teacher(x, index)
    teacher.set_arch(space.largest())
    assert torch.allclose(targets, teacher.eval()(x).softmax(1), atol=1e-6)
    ref = copy.deepcopy(t.net).train()
    archs = t.archs(t.step)
    torch.manual_seed(1)  # dropout draws, the same for both
    losses = t.train_step(x, y, targets)
    xr = resize(x, archs[0].r).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    expected = []
    for arch in archs:
        ref.set_arch(arch)
        expected.append(F.cross_entropy(ref(xr), targets))
    assert torch.allclose(losses, torch.stack(expected).detach(), rtol=1e-5, atol=1e-6)
    # Augmented images differ at every step: the teacher runs on each batch.
    augmented = Trainer(tiny(tmp_path / "aug", f"train.teacher_file={tmp_path / 'teacher.pt'}", "data.augment=true"))
    assert augmented.teacher.table is None
    # A standalone training's file teaches with the one architecture it trained.
    alone = "mini:r28:k5e3-k3e2.k3e2-k3e2-k7e4"
    checkpoints.save_supernet(teacher, str(tmp_path / "alone.pt"), {"config": {"train": {"arch": alone}}})
    t = Trainer(tiny(tmp_path / "alone", f"train.teacher_file={tmp_path / 'alone.pt'}", "data.augment=false"))
    assert t.teacher.net.arch.to_str() == alone
    checkpoints.save_supernet(Supernet(get_space("mini").with_data(1, 5), 32), str(tmp_path / "five.pt"))
    with pytest.raises(ValueError, match="train.teacher_file .*five.pt' is for 1-channel, 5-class data"):
        Trainer(tiny(tmp_path / "five", f"train.teacher_file={tmp_path / 'five.pt'}"))


def test_elastic_fields_limit_what_the_sandwich_varies(tmp_path):
    space = get_space("mini")
    largest = space.largest()
    # Nothing elastic: the largest alone (OFA's progressive shrinking starts so).
    t = Trainer(tiny(tmp_path / "a", "train.elastic=[]"))
    assert all(t.archs(step) == [largest] for step in range(5))
    # Only kernels elastic: depth, expand and resolution stay the largest's, kernels vary.
    t = Trainer(tiny(tmp_path / "b", "train.elastic=[ks]", "train.sandwich_random=2"))
    drawn = [a for step in range(5) for a in t.archs(step)]
    assert all(a.d == largest.d and a.e == largest.e and a.r == largest.r for a in drawn)
    assert {k for a in drawn for k in a.ks} == set(space.kernel_sizes)
    # Resolution held: every subnet at the largest's, the rest drawn; the stage's supernet.pt says so.
    t = Trainer(tiny(tmp_path / "r", "train.elastic=[ks,e,d]", "train.sandwich_random=2"))
    drawn = [a for step in range(5) for a in t.archs(step)]
    assert {a.r for a in drawn} == {largest.r} and drawn[1] == dataclasses.replace(space.smallest(), r=largest.r)
    assert t.net.trained_space == space.elastic_in(["ks", "e", "d"])
    # Everything elastic (the default): the largest, the smallest, then random subnets at one resolution.
    t = Trainer(tiny(tmp_path / "c"))
    for step in range(5):
        archs = t.archs(step)
        assert archs[0] == dataclasses.replace(largest, r=archs[0].r)
        assert archs[1] == dataclasses.replace(space.smallest(), r=archs[0].r)
        assert len({a.r for a in archs}) == 1


def test_a_stage_may_set_its_own_elastic_fields_random_subnets_and_teacher(tmp_path, monkeypatch):
    from oqat.run import pipeline
    seen = []

    def record(cfg):  # what each stage would train, and the file the next stage starts from
        seen.append((cfg.train.sandwich_random, cfg.train.elastic, cfg.train.teacher_file))
        checkpoints.save_supernet(Supernet(get_space("mini").with_data(3, 10), cfg.train.bits),
                            os.path.join(cfg.run.dir, "supernet.pt"))

    monkeypatch.setattr(pipeline, "train", record)
    cfg = tiny(tmp_path, "train.sandwich_random=1", "train.elastic=[ks,e,d]",
               "stages=[{bits: 32, epochs: 1, elastic: []}, {bits: 4, epochs: 1, sandwich_random: 3}, "
               "{bits: 4, epochs: 1, teacher: 0}]")
    pipeline.run_stages(cfg)
    fp = os.path.join(tmp_path, "stages", "0-fp", "supernet.pt")
    assert seen == [(1, [], None), (3, ["ks", "e", "d"], None), (1, ["ks", "e", "d"], fp)]
    with pytest.raises(ValueError, match="sandwich_random must be >= 0"):
        tiny(tmp_path, "stages=[{bits: 4, epochs: 1, sandwich_random: -1}]")


def test_resume_drops_a_metrics_line_cut_short_by_a_crash(tmp_path):
    lines = [json.dumps({"kind": "step", "step": s}) + "\n" for s in (2, 4, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"kind": "st')
    RunLog(str(tmp_path), 4, resumed=True).close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:2])


def test_metrics_readers_leave_out_a_line_cut_short_and_name_a_bad_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "epoch", "epoch": 1, "step": 2}\n\n{"kind": "step", "step": 3}\n{"kind": "ep')
    assert [r["step"] for r in read_metrics(str(path))] == [2, 3]
    assert last_epoch(str(path))["epoch"] == 1 and last_epoch(str(tmp_path / "none.jsonl")) is None
    path.write_text('{"kind": "step", "step": 3}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl' line 2 is not a metrics record"):
        read_metrics(str(path))
