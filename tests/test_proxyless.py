"""The `proxyless` space (OFA's OFAProxylessNASNets, width 1.0) is data: the same Supernet
class builds it, extraction matches the supernet, and its costs are OFA's."""
import json
import os
import random

import numpy as np
import pytest
import torch
from test_cost import check_against_hooks
from test_e2e import FMNIST, _has_fmnist, _oqat
from test_export import assert_parity, make_subnet
from test_supernet import max_diff, prepared
from torch import nn

from oqat.deploy import export, runners
from oqat.nets.cost import arch_metrics
from oqat.nets.layers import QConv2d
from oqat.nets.supernet import Supernet
from oqat.space.arch import Arch
from oqat.space.builtin import MINI_PROXYLESS, PROXYLESS

pytestmark = pytest.mark.usefixtures("one_thread")

# MACs and parameters that once-for-all's own counter gives for these architectures:
# OFAProxylessNASNets(n_classes=1000, bn_param=(0.1, 1e-3), dropout_rate=0.1, width_mult=1.0,
# ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]),
# set_active_subnet(ks, e, d + [1]), get_active_subnet(), then ofa.utils.pytorch_utils
# count_net_flops(subnet, (1, 3, r, r)) and count_parameters(subnet) (architectures written here
# in oqat's compact form, with d + [1] the d given to OFA); mit-han-lab/once-for-all
# at its newest stored snapshot, run on 2026-11-29. OFA's counter adds MACs in float32, so
# its totals are compared after rounding ours to float32.
OFA_COUNTS = [
    ("proxyless:r224:k7e6.k7e6.k7e6.k7e6-k7e6.k7e6.k7e6.k7e6-k7e6.k7e6.k7e6.k7e6-k7e6.k7e6.k7e6.k7e6-k7e6.k7e6.k7e6.k7e6-k7e6", 606590720, 5103336),
    ("proxyless:r128:k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3", 51200000, 2500632),
    ("proxyless:r220:k5e6.k5e3.k3e4-k7e6.k5e3-k5e4.k5e6.k7e3.k3e4-k7e4.k3e4-k3e3.k7e6-k7e6", 276883872, 3359704),
    ("proxyless:r148:k5e3.k7e4.k7e6-k3e3.k7e4.k5e6-k3e6.k7e3.k5e6.k7e4-k3e6.k3e3-k3e6.k3e4.k7e4-k3e6", 160257728, 3589088),
    ("proxyless:r160:k3e6.k3e3.k3e3-k7e6.k5e4-k3e4.k7e4-k3e6.k3e4-k7e6.k5e3.k7e4.k7e6-k5e6", 145987200, 3901784),
    ("proxyless:r160:k3e6.k7e3-k3e3.k5e4.k5e3.k3e4-k3e3.k3e3.k7e6-k3e3.k7e3.k7e6.k7e3-k7e4.k7e3-k3e6", 146394400, 3236136),
]


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return Supernet(PROXYLESS, 32)  # quantizers off: they change neither layers nor parameters


def test_space_is_ofa_proxyless():
    sp = PROXYLESS
    assert (sp.stem_width, sp.stem_stride, sp.stem_act, sp.first_block.width) == (32, 2, "relu6", 16)
    assert [s.width for s in sp.stages] == [24, 40, 80, 96, 192, 320]
    assert [s.stride for s in sp.stages] == [2, 2, 2, 1, 2, 1]
    assert {s.act for s in sp.stages} | {sp.first_block.act} == {"relu6"} and not any(s.se for s in sp.stages)
    assert sp.num_blocks == 21 and len(sp.elastic_stages) == 5 and sp.bn_eps == 1e-3 and sp.num_classes == 1000
    assert [(h.name, h.width, h.bn, h.act, h.pooled) for h in sp.head] == [("feature_mix", 1280, True, "relu6", False)]
    # The last block always runs; its kernel and expand ratio are elastic.
    arch = sp.arch(ks=[3] * 20 + [7], e=[3] * 20 + [6], d=[2] * 5, r=128)
    assert sp.active_blocks(arch)[-1] == (21, 7, 6)
    assert arch.to_str().endswith("-k7e6") and Arch.parse(arch.to_str()) == arch
    with pytest.raises(ValueError, match="has more than 1 block"):
        Arch.parse(arch.to_str()[:-len("-k7e6")] + "-k7e6.k3e3")


def test_the_supernet_class_builds_it(supernet):
    names = {type(m).__name__ for m in supernet.modules()}
    assert "SqueezeExcite" not in names and "ElasticSE" not in names
    assert isinstance(supernet.feature_mix.conv, QConv2d) and isinstance(supernet.feature_mix.bn, nn.BatchNorm2d)
    assert isinstance(supernet.feature_mix.act, nn.ReLU6) and isinstance(supernet.stem.act, nn.ReLU6)
    assert not isinstance(supernet.stem.conv, QConv2d) and not hasattr(supernet, "final_expand")
    assert all(m.eps == 1e-3 for m in supernet.modules() if isinstance(m, nn.BatchNorm2d))
    assert not supernet.first_block.residual and len(supernet.blocks) == 21


@pytest.mark.parametrize("arch,macs,params", OFA_COUNTS)
def test_costs_equal_ofas_counter(arch, macs, params):
    got = arch_metrics(Arch.parse(arch), PROXYLESS, 32)
    assert np.float32(got["macs"]) == np.float32(macs) and abs(got["macs"] - macs) <= 16
    assert got["params"] == params


def test_cost_matches_hook_count(supernet):
    rng = random.Random(0)
    archs = [PROXYLESS.smallest()] + [PROXYLESS.sample(rng) for _ in range(3)]
    for arch in archs:
        check_against_hooks(PROXYLESS.arch(ks=arch.ks, e=arch.e, d=arch.d, r=128), supernet, 2)


def test_extract_matches_supernet():
    net = prepared(PROXYLESS, 4, seed=1, r=128, batch=2)
    rng = random.Random(1)
    for arch in [PROXYLESS.smallest(), PROXYLESS.sample(rng)]:
        arch = PROXYLESS.arch(ks=arch.ks, e=arch.e, d=arch.d, r=128)
        assert max_diff(net, arch, torch.randn(2, 3, 128, 128)) <= 1e-4


@pytest.mark.parametrize("bits", [4, 2])
def test_small_variant_extract_matches_supernet(bits):
    net = prepared(MINI_PROXYLESS, bits, seed=bits, r=28)
    rng = random.Random(bits)
    for arch in [MINI_PROXYLESS.largest(), MINI_PROXYLESS.smallest()] + [MINI_PROXYLESS.sample(rng) for _ in range(6)]:
        x = torch.randn(3, 1, arch.r, arch.r)
        assert max_diff(net, arch, x) <= 1e-5, arch


@pytest.mark.parametrize("bits", [4, 2])
def test_onnx_export_matches_pytorch(bits):
    """relu6 exports as Clip(0, 6), and the feature mix (with BN) runs before the pooling."""
    net = make_subnet(bits, Arch.parse("mini-proxyless:r28:k3e2.k5e4-k7e3-k3e2.k5e3.k3e4-k5e4"))
    model = export.build_onnx(net)
    assert [n.op_type for n in model.graph.node].count("Clip") >= 10
    x = torch.randn(1000, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for run in export.runners(net).values():
        assert_parity(runners.parity(net, run, x))


@pytest.mark.slow
@pytest.mark.skipif(not _has_fmnist(), reason="Fashion-MNIST not installed (scripts/setup.sh installs it)")
def test_oqat_run_on_fashion_mnist(tmp_path):
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml")
    proc = _oqat("run", config, f"run.dir={tmp_path}", "model.space=mini-proxyless", f"data.root={FMNIST}",
                 "data.download=false", "data.val_size=100", "data.train_size=256", "data.batch_size=64",
                 "train.calib_images=64", "train.sandwich_random=0", "train.log_every=5",
                 "stages=[{bits: 4, epochs: 1}]", "search.population=2", "search.generations=1",
                 "search.val_images=100", "search.calib_images=64", "export.test_images=50", "export.speed_rounds=0",
                 "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    large = results["family"]["4"]["L"]
    assert large["arch"].startswith("mini-proxyless:") and 0 <= large["test_top1"] <= 100
    assert (tmp_path / results["export"]["4"]["L"]["dir"] / "model.onnx").is_file()
