import atexit
import functools
import json
import os
import random
import shutil
import tempfile
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from oqat.cli import main
from oqat.core import typed
from oqat.data.batches import eval_batches, train_batches
from oqat.data.config import DataConfig
from oqat.data.splits import load_splits
from oqat.files.checkpoints import load_supernet, save_supernet
from oqat.nets.cost import arch_metrics
from oqat.nets.supernet import Supernet
from oqat.space.arch import Arch
from oqat.space.structure import SearchSpace, Stage, mbv3_head
from oqat.train.evaluate import evaluate, prepare_subnet, recalibrate_bn, resize

# Smaller than `mini`: 16 px inputs, 4 classes, two elastic stages; ~0.1 s per subnet evaluation.
TINY = SearchSpace(
    name="evaltiny", stem_width=8, stem_stride=2, first_block=Stage(8, 1, "relu", False),
    stages=(Stage(16, 2, "relu", False), Stage(24, 2, "h_swish", True)),
    kernel_sizes=(3, 5), expand_ratios=(2, 3), depths=(1, 2), resolutions=(12, 16),
    head=mbv3_head(32, 64), in_channels=1, num_classes=4)
DATA = DataConfig(name="synthetic", val_size=64, batch_size=32, eval_batch_size=64, synthetic_classes=4,
                  synthetic_size=16, synthetic_train=320, synthetic_test=64)


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def tiny_run() -> str:
    """A 4-bit supernet of TINY after 32 seeded SGD steps on random subnets (shared by the
    evaluate, search and predictor tests); returns its checkpoint path."""
    torch.manual_seed(0)
    splits = load_splits(DATA)
    net = Supernet(TINY, 4)
    for q in net.quantizers():
        q.init_pending = True
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    rng = random.Random(0)
    net.train()
    for epoch in range(4):
        for x, y in train_batches(splits.train, DATA, epoch):
            net.set_arch(TINY.sample(rng))
            loss = nn.functional.cross_entropy(net(resize(x, net.arch.r)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    folder = tempfile.mkdtemp(prefix="oqat-evaltiny-")
    atexit.register(shutil.rmtree, folder, True)
    path = os.path.join(folder, "supernet.pt")
    save_supernet(net, path, {"data": typed.to_dict(DATA)})
    return path


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.arch = SimpleNamespace(r=6)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


def test_recalibrate_bn_is_the_batch_weighted_average_of_batch_statistics():
    torch.manual_seed(0)
    net = ConvBN().eval()
    batches = [(torch.randn(4, 2, 8, 8) * 3 + 1, None), (torch.randn(2, 2, 8, 8), None)]
    with torch.no_grad():  # by hand: per-batch mean and biased variance at 6 px, weighted 4:2
        h = [net.conv(resize(x, 6)) for x, _ in batches]
    mean = (4 * h[0].mean((0, 2, 3)) + 2 * h[1].mean((0, 2, 3))) / 6
    var = (4 * h[0].var((0, 2, 3), unbiased=False) + 2 * h[1].var((0, 2, 3), unbiased=False)) / 6
    rng = torch.get_rng_state()
    recalibrate_bn(net, batches)
    torch.testing.assert_close(net.bn.running_mean, mean)
    torch.testing.assert_close(net.bn.running_var, var)
    pooled = torch.cat(h).var((0, 2, 3), unbiased=False)
    assert not torch.allclose(net.bn.running_var, pooled, rtol=1e-3)  # not the pooled variance
    assert not net.training and not net.bn.training and int(net.bn.num_batches_tracked) == 0
    assert torch.equal(torch.get_rng_state(), rng)  # dropout stayed off: no random draws


def test_recalibrate_bn_restores_train_mode():
    net = ConvBN().train()
    recalibrate_bn(net, [(torch.randn(3, 2, 6, 6), None)])
    assert net.training and net.drop.training


class Logits(nn.Module):
    """Returns its input as logits: x is N x C x 1 x 1."""
    arch = SimpleNamespace(r=1)

    def forward(self, x):
        return x.flatten(1)


def test_evaluate_top1_top5_loss():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]])
    y = torch.tensor([0, 2, 0])  # right; 5th best (top-5 hit); right
    res = evaluate(Logits(), [(logits[:2, :, None, None], y[:2]), (logits[2:, :, None, None], y[2:])])
    assert res["n"] == 3
    assert res["top1"] == pytest.approx(200 / 3) and res["top5"] == pytest.approx(100.0)
    assert res["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item())


def test_prepare_subnet_is_deterministic_and_differs_from_supernet_stats():
    net, ckpt = load_supernet(tiny_run())
    assert ckpt["data"] == DATA
    splits = load_splits(DATA)
    arch = TINY.smallest()
    a = prepare_subnet(net, arch, DATA, splits, 100, seed=0)
    b = prepare_subnet(net, arch, DATA, splits, 100, seed=0)
    c = prepare_subnet(net, arch, DATA, splits, 100, seed=1)
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    key = "blocks.1.dw.bn.running_mean"
    assert not torch.equal(sa[key], sc[key])  # another calibration subset, other statistics
    assert not torch.equal(sa[key], net.blocks[0].dw.bn.running_mean[:len(sa[key])])
    assert evaluate(a, eval_batches(splits.val, DATA))["top1"] > 100 / 4 + 5  # trained: above chance


def test_load_supernet_without_data(tmp_path):
    save_supernet(Supernet(TINY, 4), tmp_path / "s.pt")
    net, ckpt = load_supernet(str(tmp_path / "s.pt"))
    assert ckpt["data"] is None and net.bits == 4 and net.space == TINY


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_cli_is_deterministic_and_reports_costs(capsys):
    arch = "evaltiny:r16:k5e3.k3e2-k3e3"
    argv = ("eval", tiny_run(), "--arch", arch, "--calib-images", 128, "--json", "--device", "cpu")
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    first = json.loads(out)
    assert run_cli(capsys, *argv)[1] == out
    c = arch_metrics(Arch.parse(arch, TINY), TINY, 4)
    assert {k: first[k] for k in c} == c and first["split"] == "val" and first["n"] == DATA.val_size
    test = json.loads(run_cli(capsys, *argv, "--split", "test")[1])
    assert test["n"] == DATA.synthetic_test
    code, out, _ = run_cli(capsys, "eval", tiny_run(), "--arch", arch, "--calib-images", 128)
    assert code == 0 and "top1" in out and "bitops" in out and "flops_q" in out


def test_eval_cli_validates_the_architecture_once(capsys, monkeypatch):
    path, validated, real = tiny_run(), [], SearchSpace.check
    user = Arch.parse("evaltiny:r16:k5e3.k3e2-k3e3", TINY)

    def counting(space, arch):
        if arch.checked_in is not space:
            validated.append(arch)
        return real(space, arch)

    monkeypatch.setattr(SearchSpace, "check", counting)
    code, _, _ = run_cli(capsys, "eval", path, "--arch", "evaltiny:r16:k5e3.k3e2-k3e3",
                         "--calib-images", 128, "--json", "--device", "cpu")
    assert code == 0 and validated.count(user) == 1  # not again in extraction, costing or export


def test_eval_cli_errors(capsys):
    code, _, err = run_cli(capsys, "eval", tiny_run(), "--arch", str(Arch.parse("mini:r28:k3e2-k3e2-k3e2-k3e2")))
    assert code == 2 and "space 'mini'" in err and "'evaltiny'" in err
    code, _, err = run_cli(capsys, "eval", tiny_run(), "--arch", "evaltiny:r16:k3e2-k3e2",
                           "--data", "synthetic_classes=7")
    assert code == 2 and "7 classes" in err


def test_recalibrating_the_supernet_equals_recalibrating_the_extracted_subnet():
    net, _ = load_supernet(tiny_run())
    arch = Arch.parse("evaltiny:r12:k5e2.k3e3-k3e2", TINY)
    batches = [(torch.randn(8, 1, 16, 16), None), (torch.randn(4, 1, 16, 16), None)]
    sub = net.extract(arch, keep_bn=True)
    recalibrate_bn(sub, batches)
    net.set_arch(arch)
    recalibrate_bn(net, batches)  # elastic BNs: only the active channels change
    torch.testing.assert_close(net.extract(arch, keep_bn=True).state_dict(), sub.state_dict())


@pytest.mark.parametrize("bits", [2, 4])
def test_evaluation_in_the_runtime_equals_the_exact_forward(bits, monkeypatch):
    """evaluate runs a quantized subnet in oqat's runtime where it is built: the same numbers,
    to the last digit, as the exact forward it stands in for."""
    from oqat.space.builtin import MINI
    from oqat.train import evaluate as ev
    torch.manual_seed(0)
    cfg = DataConfig(name="synthetic", val_size=64, synthetic_train=256)
    splits = load_splits(cfg)
    net = Supernet(MINI.with_data(splits.in_channels, splits.num_classes), bits)
    calib = [(x, y) for x, y in train_batches(splits.train, cfg, 0)][:2]
    net.init_steps_(torch.cat([x for x, _ in calib]))
    sub = net.extract(MINI.largest(), calib=calib)
    if ev._runtime_forward(sub, sub.arch.r) is None:
        pytest.skip("oqat's runtime cannot be built here")
    batches = list(eval_batches(splits.val, cfg))
    in_runtime = evaluate(sub, batches)
    monkeypatch.setattr(ev, "_runtime_forward", lambda *_: None)
    assert evaluate(sub, batches) == in_runtime
    assert 0 < in_runtime["loss"] and in_runtime["n"] == 64
