import dataclasses
import random

import pytest
import torch

from oqat.files.checkpoints import load_subnet, load_supernet, save_subnet, save_supernet
from oqat.nets import layers, supernet as elastic
from oqat.nets.layers import MBConv, QConv2d
from oqat.nets.subnet import Subnet
from oqat.nets.supernet import Supernet
from oqat.quant.lsq import LSQ, set_bits_
from oqat.space.arch import Arch
from oqat.space.builtin import MBV3, MINI
from oqat.space.structure import SearchSpace, Stage, mbv3_head

ELASTIC = (elastic.ElasticMBConv, elastic.ElasticPointwise, elastic.ElasticDepthwise,
           elastic.ElasticBatchNorm2d, elastic.ElasticSE, Supernet)


def prepared(space: SearchSpace, bits: int, seed: int, r: int, batch: int = 4) -> Supernet:
    """A supernet with non-trivial state: BN statistics from one batch then perturbed affine
    parameters, non-identity kernel transforms and LSQ steps initialised from data."""
    torch.manual_seed(seed)
    net = Supernet(space, bits)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.add_(0.1 * torch.randn_like(p))
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.momentum = 1.0  # running statistics = this batch's
        for q in net.quantizers():
            q.init_pending = bits != 32
        net.train()
        net(torch.randn(batch, space.in_channels, r, r))
        for m in bns:
            m.momentum = space.bn_momentum
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    assert all(not q.init_pending for q in net.quantizers())
    return net.eval()


def test_prepared_steps_are_non_trivial():
    net = prepared(MINI, 4, 0, 28)
    steps = torch.cat([q.step for q in net.quantizers()])
    assert (steps != 1).all() and steps.unique().numel() > len(steps) // 2


def max_diff(net: Supernet, arch: Arch, x: torch.Tensor) -> float:
    net.set_arch(arch)
    with torch.no_grad():
        want = net(x)
        got = net.extract(arch)(x)
    return (want - got).abs().max().item()


@pytest.mark.parametrize("bits", [4, 2, 32])
def test_mini_extract_matches_supernet(bits):
    net = prepared(MINI, bits, seed=bits, r=32)
    rng = random.Random(bits)
    archs = [MINI.largest(), MINI.smallest()] + [MINI.sample(rng) for _ in range(14)]
    for arch in archs:
        x = torch.randn(4, 1, arch.r, arch.r)
        assert max_diff(net, arch, x) <= 1e-5, arch


def test_mbv3_extract_matches_supernet():
    net = prepared(MBV3, 4, seed=1, r=128, batch=2)
    rng = random.Random(1)
    x = torch.randn(2, 3, 128, 128)
    archs = [MBV3.smallest(), MBV3.sample(rng)]
    for bits in (4, 2, 32):
        set_bits_(net, bits)
        for arch in archs:
            assert max_diff(net, arch, x) <= 1e-5, (bits, arch)


def test_extraction_exercises_quantization():
    """The check above would be weak if quantization did nothing: at 2 bits the output
    must move far from the full-precision output of the same weights."""
    net = prepared(MINI, 2, seed=3, r=28)
    x = torch.randn(4, 1, 28, 28)
    arch = MINI.sample(random.Random(0))
    net.set_arch(arch)
    with torch.no_grad():
        q = net(x)
        set_bits_(net, 32)
        fp = net(x)
    assert (q - fp).abs().max() > 1e-2


def test_subnet_is_static_and_reloads_from_its_own_file(tmp_path):
    net = prepared(MINI, 3, seed=4, r=28)
    arch = MINI.sample(random.Random(4))
    sub = net.extract(arch)
    assert isinstance(sub, Subnet) and sub.bits == 3 and sub.arch == arch
    assert not any(isinstance(m, ELASTIC) for m in sub.modules())
    assert not sub.training  # extracted in the supernet's mode
    path = tmp_path / "sub.pt"
    save_subnet(sub, str(path), {"note": "x"})
    del net
    again = load_subnet(str(path))
    assert not any(isinstance(m, ELASTIC) for m in again.modules())
    assert again.arch == arch and again.bits == 3
    assert all(q.bits == 3 for q in again.modules() if isinstance(q, LSQ))
    x = torch.randn(3, 1, arch.r, arch.r)
    with torch.no_grad():
        assert torch.equal(sub(x), again(x))


def test_supernet_save_load_round_trip(tmp_path):
    net = prepared(MINI, 2, seed=5, r=24)
    path = tmp_path / "super.pt"
    save_supernet(net, str(path))
    again = load_supernet(str(path))[0]
    assert again.bits == 2 and again.elastic == ("ks", "e", "d", "r")
    net.set_elastic_(("ks", "d"))
    save_supernet(net, str(path))
    assert load_supernet(str(path))[0].trained_space == MINI.elastic_in(["ks", "d"])
    arch = MINI.sample(random.Random(5))
    x = torch.randn(2, 1, arch.r, arch.r)
    net.set_arch(arch)
    again.set_arch(arch)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))


def test_the_elastic_fields_are_the_supernets_own():
    assert Supernet(MINI, 2, elastic=["d"]).trained_space == MINI.elastic_in(["d"])
    for bad in (["ks", "ks"], ["width"], [3]):
        with pytest.raises(ValueError, match="elastic must list distinct Arch fields"):
            Supernet(MINI, 2, elastic=bad)
    with pytest.raises(AttributeError):
        Supernet(MINI, 2).elastic = ("ks",)  # set_elastic_ checks them


@pytest.mark.parametrize("space", [MINI, dataclasses.replace(MINI, signed_inputs=False)], ids=["signed", "authors"])
def test_one_weight_step_and_one_activation_step_per_conv(space):
    net = Supernet(space, 4)
    convs = [m for m in net.modules() if isinstance(m, QConv2d)]
    # 3 per elastic block, 2 in the first block (no expand), final expand and feature mix
    assert len(convs) == 3 * space.num_blocks + 2 + 2
    # Signed inputs: exactly the convs that read a block's linear output (expands, final expand).
    linear_in = {id(b.expand.conv) for b in net.blocks} | {id(net.final_expand.conv)}
    for conv in convs:
        lsqs = [m for m in conv.modules() if isinstance(m, LSQ)]
        assert len(lsqs) == 2 and conv.wq.signed
        assert conv.aq.signed == (space.signed_inputs and id(conv) in linear_in)
        assert conv.wq.step.shape == conv.aq.step.shape == (1,)
    assert len(net.quantizers()) == 2 * len(convs)
    sub = net.extract(space.sample(random.Random(1)))
    assert [m.aq.signed for m in sub.modules() if isinstance(m, QConv2d)].count(True) == \
        (sum(b.expand is not None for b in sub.blocks) + 1) * space.signed_inputs


def test_the_authors_space_quantizes_every_input_unsigned():
    assert not MBV3.signed_inputs
    assert not any(m.aq.signed for m in Supernet(MBV3, 4).modules() if isinstance(m, QConv2d))


def test_steps_are_shared_by_every_subnet():
    net = prepared(MINI, 2, seed=6, r=28)
    rng = random.Random(6)
    archs = [MINI.largest(), MINI.smallest()] + [MINI.sample(rng) for _ in range(4)]
    x = torch.randn(2, 1, 28, 28)
    # block 0 runs in every architecture; its kernel and expand ratio vary
    step = net.blocks[0].project.conv.aq.step
    subs = [net.extract(a) for a in archs]
    for sub in subs:
        assert torch.equal(sub.blocks[1].project.conv.aq.step, step)
    with torch.no_grad():
        before = [sub(x) for sub in subs]
        step.mul_(1.7)
        after = [net.extract(a)(x) for a in archs]
        for arch, a in zip(archs, after):
            net.set_arch(arch)
            assert torch.allclose(net(x), a, atol=1e-5)
    for b, a in zip(before, after):
        assert (a - b).abs().max() > 1e-4


def test_kernel_transform_identity_uses_centre_of_the_7x7():
    torch.manual_seed(0)
    net = Supernet(MINI, 4)
    ks = [3, 5] + [7] * 10
    arch = MINI.arch(ks=ks, e=[4] * 12, d=[3] * 4, r=28)
    sub = net.extract(arch)
    w = net.blocks[0].dw.conv.weight
    mid = MINI.mid_channels(16, 4)
    assert torch.equal(sub.blocks[1].dw.conv.weight, w[:mid, :, 2:5, 2:5])
    assert torch.equal(sub.blocks[2].dw.conv.weight, net.blocks[1].dw.conv.weight[:96, :, 1:6, 1:6])
    assert torch.equal(sub.blocks[3].dw.conv.weight, net.blocks[2].dw.conv.weight[:96])
    assert sub.blocks[1].dw.conv.padding == (1, 1) and sub.blocks[2].dw.conv.padding == (2, 2)


def test_kernel_transform_matrices_apply_in_sequence():
    torch.manual_seed(1)
    net = Supernet(MINI, 4)
    with torch.no_grad():
        for p in net.blocks[0].dw.conv.transforms.values():
            p.copy_(torch.randn_like(p))
    m75, m53 = net.blocks[0].dw.conv.transforms["7to5"], net.blocks[0].dw.conv.transforms["5to3"]
    mid = MINI.mid_channels(16, 2)
    w = net.blocks[0].dw.conv.weight[:mid]
    w5 = (w[:, :, 1:6, 1:6].reshape(mid, 25) @ m75.T).reshape(mid, 1, 5, 5)
    w3 = (w5[:, :, 1:4, 1:4].reshape(mid, 9) @ m53.T).reshape(mid, 1, 3, 3)
    arch = MINI.arch(ks=[3] + [7] * 11, e=[2] * 12, d=[1] * 4, r=28)
    assert torch.allclose(net.extract(arch).blocks[1].dw.conv.weight, w3, atol=1e-5)
    arch5 = MINI.arch(ks=[5] + [7] * 11, e=[2] * 12, d=[1] * 4, r=28)
    assert torch.allclose(net.extract(arch5).blocks[1].dw.conv.weight, w5, atol=1e-5)


def test_training_bn_updates_only_the_active_channels():
    torch.manual_seed(2)
    net = Supernet(MINI, 32).train()
    net.set_arch(MINI.smallest())
    bn = net.blocks[0].expand.bn
    c = MINI.mid_channels(16, 2)
    assert c < bn.num_features
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    net(torch.randn(4, 1, 24, 24))
    assert torch.equal(bn.running_mean[c:], mean[c:]) and torch.equal(bn.running_var[c:], var[c:])
    assert (bn.running_mean[:c] != mean[:c]).all() and (bn.running_var[:c] != var[:c]).all()
    assert bn.num_batches_tracked.item() == 1


def test_bits_apply_to_the_whole_net():
    net = Supernet(MINI, 4)
    assert {q.bits for q in net.quantizers()} == {4}
    set_bits_(net, 2)
    assert {q.bits for q in net.quantizers()} == {2} and net.bits == 2
    assert {m.bits for m in net.extract(MINI.smallest()).modules() if isinstance(m, LSQ)} == {2}
    with pytest.raises(ValueError, match="bits"):
        set_bits_(net, 0)


def test_space_mismatch_is_refused():
    net = Supernet(MINI, 4)
    with pytest.raises(ValueError, match="space 'mbv3'"):
        net.set_arch(MBV3.smallest())
    with pytest.raises(ValueError, match="space 'mbv3'"):
        net.extract(MBV3.smallest())


def test_a_new_space_needs_no_new_class():
    tiny = SearchSpace(name="tiny-test", stem_width=8, stem_stride=2, first_block=Stage(8, 1, "relu", False),
                       stages=(Stage(16, 2, "relu", True), Stage(24, 2, "h_swish", True)),
                       kernel_sizes=(3, 5), expand_ratios=(2, 3), depths=(1, 2), resolutions=(16, 20),
                       head=mbv3_head(32, 48), in_channels=2, num_classes=5)
    net = prepared(tiny, 3, seed=7, r=20)
    for arch in [tiny.largest(), tiny.smallest(), tiny.sample(random.Random(7))]:
        x = torch.randn(2, 2, arch.r, arch.r)
        assert max_diff(net, arch, x) <= 1e-5
        assert net(x).shape == (2, 5)


def test_mbconv_residual_only_when_shapes_allow():
    assert MBConv(16, 16, 32, 3, 1, "relu", False).residual
    assert not MBConv(16, 24, 32, 3, 1, "relu", False).residual
    assert not MBConv(16, 16, 32, 3, 2, "relu", False).residual
    x = torch.randn(1, 16, 8, 8)
    block = MBConv(16, 16, 32, 3, 1, "relu", False).eval()
    with torch.no_grad():
        block.project.bn.weight.zero_()
        block.project.bn.bias.zero_()
        assert torch.allclose(block(x), x)


def forward_backward(net, x):
    torch.manual_seed(0)  # the same dropout mask
    net.zero_grad(set_to_none=True)
    out = net(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("space", [MINI, MBV3])
def test_activation_folded_into_the_next_quantizer_changes_nothing(space, monkeypatch):
    """ReLU (or h_swish) then the quantizer = the quantizer applying it, bit for bit: the step
    init, the outputs and every gradient, for the supernet and an extracted subnet."""
    r = min(space.resolutions)
    x = torch.randn(4, space.in_channels, r, r, generator=torch.Generator().manual_seed(0))
    arch = dataclasses.replace(space.sample(random.Random(2)), r=r)
    results = []
    for fold in (True, False):
        if not fold:
            monkeypatch.setattr(layers, "folded_act", lambda block: None)
        torch.manual_seed(1)
        net = Supernet(space, 4).train()
        net.init_steps_(x)
        net.set_arch(arch)
        results.append((torch.cat([q.step for q in net.quantizers()]), *forward_backward(net, x),
                        *forward_backward(net.extract(), x)))
    assert all(layers.folded_act(b) is None for b in net.blocks)  # the reference run really did not fold
    monkeypatch.undo()
    assert {layers.folded_act(b) for b in net.blocks} >= {"relu", "h_swish"}
    for folded, plain in zip(*results):
        if isinstance(folded, dict):
            assert folded.keys() == plain.keys() and all(torch.equal(folded[k], plain[k]) for k in folded)
        else:
            assert torch.equal(folded, plain)


@pytest.mark.parametrize("k,stride,layout", [(7, 1, torch.channels_last), (5, 2, torch.channels_last),
                                             (7, 2, torch.contiguous_format), (3, 1, torch.channels_last)])
def test_depthwise_conv_gradients_equal_autograd_of_conv2d(k, stride, layout):
    torch.manual_seed(0)
    x = torch.randn(6, 16, 9, 9).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(16, 1, k, k).requires_grad_()
    out = layers.conv2d(x, w, stride, 16)
    ref = torch.nn.functional.conv2d(x, w, None, stride, k // 2, 1, 16)
    assert (out.grad_fn.name() == "_DepthwiseConvBackward") == (k > 3)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, w), g)
    ref_grads = torch.autograd.grad(ref, (x, w), g)
    assert torch.equal(out, ref)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_global_pooling_keeps_the_gradient_channels_last():
    # As in the head: BN -> h_swish -> pool -> classifier. x.mean's backward hands the BN an
    # NCHW gradient for its channels-last input, which is 6x slower on CPU.
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    h = torch.nn.functional.hardswish(torch.nn.BatchNorm2d(8)(x))
    layouts = []
    h.register_hook(lambda g: layouts.append(g.is_contiguous(memory_format=torch.channels_last)))
    y = layers.pool(h)
    assert torch.allclose(y, h.mean((2, 3), keepdim=True), rtol=1e-6, atol=1e-7)
    torch.nn.Linear(8, 3)(y.flatten(1)).sum().backward()
    assert layouts == [True]
