import random

import pytest
import torch
from torch import nn

from oqat.nets import cost
from oqat.nets.cost import METRICS, arch_cost, arch_metrics
from oqat.nets.layers import MBConv, QConv2d, SqueezeExcite
from oqat.nets.supernet import Supernet
from oqat.quant.lsq import LSQ
from oqat.space.arch import Arch
from oqat.space.builtin import MBV3, MINI
from oqat.space.structure import SearchSpace, Stage, mbv3_head

# One stage, one block, one kernel and expand ratio: small enough to count by hand.
TINY = SearchSpace(name="tiny-cost", stem_width=8, stem_stride=2, first_block=Stage(8, 1, "relu", False),
                   stages=(Stage(16, 2, "relu", False),), kernel_sizes=(3,), expand_ratios=(2,), depths=(1,),
                   resolutions=(8,), head=mbv3_head(16, 32), in_channels=1, num_classes=10)


def hook_count(net: nn.Module, r: int, in_channels: int) -> dict[str, int]:
    """MACs and parameters of a built network, counted from its modules while it runs.
    SE calls its convs' weights functionally (shared with the elastic SE), so its hook
    counts both convs on the pooled 1x1 input."""
    counts = {"macs_q": 0, "macs_fp": 0}

    def conv_macs(m: nn.Conv2d, h_out: int, w_out: int) -> int:
        return m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] * m.out_channels * h_out * w_out

    def conv_hook(m, inputs, out):
        counts["macs_q" if isinstance(m, QConv2d) else "macs_fp"] += conv_macs(m, out.shape[2], out.shape[3])

    def linear_hook(m, inputs, out):
        counts["macs_fp"] += m.in_features * m.out_features

    def se_hook(m, inputs, out):
        counts["macs_fp"] += conv_macs(m.reduce, 1, 1) + conv_macs(m.expand, 1, 1)

    se_convs = {id(c) for m in net.modules() if isinstance(m, SqueezeExcite) for c in (m.reduce, m.expand)}
    hooks = [(m, se_hook) for m in net.modules() if isinstance(m, SqueezeExcite)]
    hooks += [(m, conv_hook) for m in net.modules() if isinstance(m, nn.Conv2d) and id(m) not in se_convs]
    hooks += [(m, linear_hook) for m in net.modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(hook) for m, hook in hooks]
    with torch.no_grad():
        net.eval()(torch.zeros(1, in_channels, r, r))
    for h in handles:
        h.remove()
    # The authors' README counts parameters without the learned step sizes.
    steps = {id(p) for m in net.modules() if isinstance(m, LSQ) for p in m.parameters()}
    params = sum(p.numel() for p in net.parameters() if p.requires_grad and id(p) not in steps)
    params_q = sum(m.weight.numel() for m in net.modules() if isinstance(m, QConv2d))
    return {**counts, "params": params, "params_q": params_q}


@pytest.fixture(scope="module")
def supernets():
    torch.manual_seed(0)
    # quantizers off for speed: they do not change the layers or the parameters
    return {"mini": Supernet(MINI, 32), "mbv3": Supernet(MBV3, 32)}


def check_against_hooks(arch: Arch, net: Supernet, bits: int):
    space = net.space
    counted = hook_count(net.extract(arch), arch.r, space.in_channels)
    got = arch_metrics(arch, space, bits)
    macs = counted["macs_q"] + counted["macs_fp"]
    assert got["macs"] == macs, arch
    assert got["params"] == counted["params"], arch
    assert got["bitops"] == counted["macs_q"] * bits * bits
    assert got["flops_q"] == pytest.approx(counted["macs_q"] * bits * bits / 64 + counted["macs_fp"])
    assert got["size_bits"] == counted["params_q"] * bits + (counted["params"] - counted["params_q"]) * 32


def test_mini_cost_matches_hook_count(supernets):
    rng = random.Random(0)
    archs = [MINI.largest(), MINI.smallest()] + [MINI.sample(rng) for _ in range(25)]
    for i, arch in enumerate(archs):
        check_against_hooks(arch, supernets["mini"], (4, 3, 2)[i % 3])


def test_mbv3_cost_matches_hook_count(supernets):
    rng = random.Random(1)
    archs = [MBV3.smallest(), MBV3.largest()] + [MBV3.sample(rng) for _ in range(4)]
    assert supernets["mbv3"].classifier.out_features == 1000
    for arch in archs:
        check_against_hooks(arch, supernets["mbv3"], 4)


def test_tiny_space_counted_by_hand():
    """stem 1->8 k3 s2 (8->4 px); first block dw 8 k3 + project 8->8 at 4 px; block: expand
    8->16 at 4 px, dw 16 k3 s2 (-> 2 px), project 16->16; final expand 16->16 at 2 px,
    feature mix 16->32 at 1 px, classifier 32->10."""
    arch = TINY.arch(ks=[3], e=[2], d=[1], r=8)
    macs_q = 8 * 9 * 16 + 8 * 8 * 16 + 8 * 16 * 16 + 16 * 9 * 4 + 16 * 16 * 4 + 16 * 16 * 4 + 16 * 32
    macs_fp = 1 * 8 * 9 * 16 + 32 * 10
    params_q = 72 + 64 + 128 + 144 + 256 + 256 + 512
    # stem weight + BN; BNs of 8, 8, 16, 16, 16, 16 channels; classifier (steps not counted)
    params_fp = 72 + 16 + 2 * (8 + 8 + 16 + 16 + 16 + 16) + 330
    assert (macs_q, macs_fp, params_q, params_fp) == (7360, 1472, 1432, 578)
    c = arch_cost(arch, TINY)
    assert (c.macs_q, c.macs_fp, c.params_q, c.params_fp) == (macs_q, macs_fp, params_q, params_fp)
    assert arch_metrics(arch, TINY, 4) == {"macs": 8832, "params": 2010, "bitops": 7360 * 16,
                                   "flops_q": 7360 * 16 / 64 + 1472, "size_bits": 1432 * 4 + 578 * 32}
    assert arch_metrics(arch, TINY, (4, 2))["bitops"] == 7360 * 8
    assert arch_metrics(arch, TINY, 32)["size_bits"] == 2010 * 32
    torch.manual_seed(0)
    counted = hook_count(Supernet(TINY, 32).extract(arch), 8, 1)  # quantizers off: its float forward runs each layer
    assert counted == {"macs_q": macs_q, "macs_fp": macs_fp, "params": 2010, "params_q": params_q}


def test_metrics_keys_and_space_argument():
    arch = MBV3.sample(random.Random(2))
    result = arch_metrics(arch, "mbv3", 4)
    assert tuple(result) == METRICS
    assert arch_metrics(arch) == result == arch_metrics(arch, MBV3)
    assert arch_metrics(arch, bits=2)["bitops"] * 4 == result["bitops"]
    assert arch_metrics(arch, bits=2)["macs"] == result["macs"]
    with pytest.raises(ValueError, match="space 'mbv3', not 'mini'"):
        arch_metrics(arch, "mini")
    with pytest.raises(ValueError, match="bits"):
        arch_metrics(arch, bits=0)


def test_cost_grows_with_the_architecture():
    small, big = arch_metrics(MBV3.smallest()), arch_metrics(MBV3.largest())
    assert all(big[k] > small[k] for k in METRICS)
    arch = MBV3.smallest()
    wider = MBV3.arch(ks=arch.ks, e=[6] + list(arch.e[1:]), d=arch.d, r=arch.r)
    assert arch_metrics(wider)["macs"] > arch_metrics(arch)["macs"]


def test_ten_thousand_archs_cost_each_distinct_block_once(monkeypatch):
    # The work, not the wall time (benchmarks/cost_speed.py times it): every block cost is
    # memoised by (block, k, e, input size), so 10,000 archs compute at most one per key.
    calls, compute = [], MBConv.cost
    monkeypatch.setattr(MBConv, "cost", staticmethod(lambda *a: calls.append(a) or compute(*a)))
    cost._block_costs.cache_clear()
    rng = random.Random(3)
    for _ in range(10_000):
        arch_metrics(MBV3.sample(rng), "mbv3", 4)
    keys = MBV3.num_blocks * len(MBV3.kernel_sizes) * len(MBV3.expand_ratios) * len(MBV3.resolutions)
    assert len(calls) <= keys  # against some 150,000 active blocks costed


# The 19 Pareto subnets of the authors' README (LaVieEnRoseSMZ/OQA, "Evaluate pareto subnets",
# 4/3/2 bits): its "FLOPs" and "Params" in millions, with -is, -ks, -es, -d.
PUBLISHED = [
    (55.385, 4.230, 128, "3,3,5,3,3,5,5,7,3,5,5,3,5,5,3,5,3,5,7,5", "3,3,4,4,3,4,3,3,3,3,3,4,4,3,6,6,6,4,3,3", "2,2,3,2,3"),
    (68.360, 3.523, 152, "5,5,5,5,5,3,3,7,5,7,7,5,5,7,5,7,5,3,3,5", "3,3,4,6,3,3,3,3,3,3,4,4,3,3,6,6,4,3,3,6", "2,2,2,2,2"),
    (82.601, 4.482, 156, "3,5,5,3,5,3,5,3,3,3,7,7,3,5,7,7,7,3,3,7", "3,4,6,6,3,4,4,3,3,3,4,3,4,3,3,4,4,4,6,3", "2,2,2,2,3"),
    (120.970, 4.084, 188, "7,3,7,5,5,3,5,5,7,5,5,5,5,5,7,7,7,7,3,3", "4,3,3,4,3,3,3,6,4,3,3,6,4,4,6,4,4,4,3,3", "2,2,2,2,3"),
    (168.057, 5.440, 184, "5,3,7,3,7,3,5,7,7,3,7,3,3,3,5,5,5,5,3,7", "4,3,6,3,4,4,3,6,6,3,4,3,4,4,4,3,6,6,6,6", "2,3,3,3,3"),
    (222.192, 5.331, 224, "5,3,3,5,3,7,5,3,3,5,3,5,5,3,7,7,7,7,7,3", "4,3,4,3,3,4,6,3,4,4,4,3,4,4,6,4,4,4,6,3", "2,2,2,3,4"),
    (286.910, 6.338, 216, "5,3,5,3,5,5,7,3,3,7,7,5,7,7,3,3,5,5,3,7", "4,4,3,4,3,3,6,4,3,4,4,4,6,6,4,3,6,4,6,6", "2,4,2,4,4"),
    (59.499, 3.911, 128, "7,3,5,3,5,3,3,3,5,5,3,3,5,5,5,5,3,7,7,7", "3,4,3,4,3,3,6,6,4,4,6,6,6,4,4,4,3,4,3,6", "2,2,3,2,2"),
    (73.368, 3.650, 152, "3,3,5,3,3,3,5,5,7,3,5,3,3,7,7,5,3,3,7,3", "3,4,3,4,4,4,3,6,3,3,6,6,6,3,3,6,4,3,4,3", "2,2,2,2,2"),
    (119.535, 4.281, 172, "5,3,3,5,3,7,7,3,5,7,5,5,5,5,5,3,7,7,3,5", "3,3,3,3,3,4,3,3,4,4,6,6,6,3,4,4,6,4,3,4", "2,2,2,3,2"),
    (174.790, 5.015, 192, "3,3,7,5,7,5,3,3,3,3,3,3,3,5,5,5,7,7,7,5", "3,3,3,6,4,6,3,6,4,4,3,4,6,4,4,3,3,6,4,3", "2,4,3,3,3"),
    (219.644, 5.762, 208, "5,5,5,5,5,3,5,5,5,3,7,3,5,5,3,7,3,7,5,3", "3,3,3,3,6,4,4,4,6,4,4,4,6,3,3,4,6,6,6,3", "2,2,4,3,4"),
    (292.019, 6.280, 212, "7,5,5,3,3,5,5,3,3,5,7,7,7,5,7,5,7,3,3,3", "3,4,4,3,6,4,4,3,6,4,3,4,3,4,4,6,6,6,6,4", "2,4,3,4,4"),
    (59.499, 3.911, 128, "7,3,5,3,5,3,3,3,5,5,3,3,5,5,5,5,3,7,7,7", "3,4,3,4,3,3,6,6,4,4,6,6,6,4,4,4,3,4,3,6", "2,2,3,2,2"),
    (87.848, 3.694, 160, "3,5,3,7,5,3,3,3,5,3,5,5,3,5,3,5,3,3,7,7", "4,3,4,4,6,6,3,3,4,4,4,6,6,4,6,4,3,3,4,4", "2,2,2,2,2"),
    (135.267, 4.078, 188, "7,5,5,5,7,3,5,5,3,3,3,3,3,7,3,5,7,7,5,3", "4,3,3,4,4,6,4,4,6,3,3,4,6,3,6,6,6,4,4,6", "2,2,2,2,2"),
    (199.504, 5.066, 208, "5,5,5,3,5,5,5,5,3,3,7,3,3,3,7,5,5,5,3,7", "3,3,6,4,6,6,3,3,4,3,3,3,6,3,4,4,6,6,4,4", "2,3,2,3,3"),
    (289.256, 5.321, 220, "5,5,5,3,3,7,3,5,5,3,3,5,5,7,5,7,7,5,3,3", "3,3,3,4,6,6,4,6,6,3,4,6,4,4,3,3,6,4,6,4", "3,3,4,4,3"),
    (455.741, 7.406, 224, "5,5,7,5,7,5,5,3,5,5,3,5,3,7,5,5,7,7,3,7", "6,6,4,4,6,4,6,4,6,4,6,6,6,6,6,6,6,6,6,6", "4,4,4,4,4"),
]


@pytest.mark.parametrize("macs,params,r,ks,e,d", PUBLISHED)
def test_published_rows_of_the_authors_readme(macs, params, r, ks, e, d):
    arch = MBV3.arch(ks=[int(v) for v in ks.split(",")], e=[int(v) for v in e.split(",")],
                     d=[int(v) for v in d.split(",")], r=r)
    got = arch_metrics(arch, MBV3, 4)
    assert f"{got['macs'] / 1e6:.3f}" == f"{macs:.3f}" and f"{got['params'] / 1e6:.3f}" == f"{params:.3f}"
