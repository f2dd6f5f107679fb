"""oqat against an independent re-implementation of the authors' evaluation network
(tests/oqa_reference.py), through a checkpoint in their release format."""
import random

import pytest
import torch
from oqa_reference import OQANet, calibrate, randomise

import oqat
from oqat.cli import main
from oqat.core.io import CheckpointError
from oqat.files.checkpoints import load_supernet
from oqat.nets.oqa import oqa_key
from oqat.nets.subnet import head_forward
from oqat.nets.supernet import Supernet
from oqat.space.arch import Arch
from oqat.space.builtin import MBV3

LARGEST = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5}
# Both networks run in float64: in float32 the engines' summation orders (which differ between
# CPUs and thread counts) move an activation across a rounding boundary now and then, and one
# code flip changes the logits by a step. In float64 that takes a value within 1e-16 of a boundary.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    net = OQANet()
    randomise(net, seed=0)
    return net


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def checkpoints(reference, images, tmp_path_factory):
    """One checkpoint per bit-width, with steps and BN statistics calibrated at that width."""
    root = tmp_path_factory.mktemp("oqa")
    paths, states = {}, {}
    for bits in (4, 2):
        calibrate(reference, images, LARGEST, bits, seed=bits)
        states[bits] = {k: v.clone() for k, v in reference.state_dict().items()}
        paths[bits] = root / f"oqa_mbv3_d234_e346_k357_w1.0_b{bits}.pth"
        torch.save({"state_dict": states[bits]}, paths[bits])
    return paths, states


def archs(seed: int, n: int) -> list[Arch]:
    rng = random.Random(seed)
    return [MBV3.arch(ks=a.ks, e=a.e, d=a.d, r=128) for a in [MBV3.sample(rng) for _ in range(n)]]


@pytest.mark.parametrize("bits", [4, 2])
def test_extracted_subnets_match_the_authors_network(bits, reference, images, checkpoints):
    paths, states = checkpoints
    reference.load_state_dict(states[bits])
    reference.set_bits(bits)
    net = oqat.load_oqa_checkpoint(str(paths[bits]), bits)
    assert isinstance(net, Supernet) and not net.training and net.bits == bits
    reference, net, images = reference.double(), net.double(), images.double()
    diffs = []
    outputs = []
    with torch.no_grad():
        for arch in archs(bits, 3) + [MBV3.arch(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r=128)]:
            want = reference(images, arch.to_dict())
            sub = net.extract(arch, keep_bn=True)
            # The method's arithmetic (LSQ fake quantization in float64, as the authors'
            # network computes it), not evaluation's exact rule, which rounds in float32.
            got = head_forward(sub, sub.blocks(sub.stem(images)))
            net.set_arch(arch)
            diffs += [(want - got).abs().max().item(), (want - net(images)).abs().max().item()]
            outputs.append(want)
        reference.set_bits(32)
        full = reference(images, arch.to_dict())
    reference.float()
    print(f"{bits}-bit: max |oqat - reference| = {max(diffs):.3g}")
    assert max(diffs) <= TOLERANCE
    # the comparison means something: quantization and the architecture both change the logits
    assert (full - outputs[-1]).abs().max() > 1e-2
    assert min((a - b).abs().max() for a, b in zip(outputs, outputs[1:])) > 1e-2


def test_every_key_maps(checkpoints):
    _, states = checkpoints
    ours = Supernet(MBV3, 4).state_dict()
    mapped = {oqa_key(k) for k in states[4]}
    assert None not in mapped and mapped == set(ours)


def corrupted(checkpoints, tmp_path, change) -> str:
    _, states = checkpoints
    state = dict(states[4])
    change(state)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    return str(path)


def test_missing_key_is_listed(checkpoints, tmp_path):
    key = "blocks.5.mobile_inverted_conv.point_linear.conv.conv.sw"
    path = corrupted(checkpoints, tmp_path, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=r"missing 1 keys \(blocks\.4\.project\.conv\.wq\.step\)"):
        oqat.load_oqa_checkpoint(path, 4)


def test_unexpected_key_is_listed(checkpoints, tmp_path):
    key = "blocks.3.mobile_inverted_conv.depth_conv.conv.9to7_matrix"
    path = corrupted(checkpoints, tmp_path, lambda s: s.update({key: torch.eye(49), "head.x": torch.ones(1)}))
    with pytest.raises(CheckpointError, match=r"unexpected 2 keys \(.*9to7_matrix.*head\.x"):
        oqat.load_oqa_checkpoint(path, 4)


def test_wrong_shape_is_listed(checkpoints, tmp_path):
    key = "blocks.7.mobile_inverted_conv.depth_conv.conv.7to5_matrix"
    path = corrupted(checkpoints, tmp_path, lambda s: s.update({key: torch.eye(24)}))
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*7to5_matrix \(24, 24\) \(expected \(25, 25\)\)"):
        oqat.load_oqa_checkpoint(path, 4)


def test_all_problems_in_one_message(checkpoints, tmp_path):
    def change(s):
        s.pop("classifier.linear.bias")
        s["extra"] = torch.ones(1)
        s["final_expand_layer.conv.sa"] = torch.ones(2)
    with pytest.raises(CheckpointError) as err:
        oqat.load_oqa_checkpoint(corrupted(checkpoints, tmp_path, change), 4)
    text = str(err.value)
    assert "classifier.bias" in text and "extra" in text and "final_expand_layer.conv.sa" in text


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        oqat.load_oqa_checkpoint(str(tmp_path / "none.pth"), 4)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a torch checkpoint"):
        oqat.load_oqa_checkpoint(str(junk), 4)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="no state_dict"):
        oqat.load_oqa_checkpoint(str(tmp_path / "list.pth"), 4)


def test_convert_oqa_cli(checkpoints, images, tmp_path, capsys):
    paths, _ = checkpoints
    out = tmp_path / "converted.pt"
    assert main(["convert-oqa", str(paths[2]), "--bits", "2", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    loaded = load_supernet(str(out))[0]
    direct = oqat.load_oqa_checkpoint(str(paths[2]), 2)
    assert loaded.bits == 2
    arch = archs(7, 1)[0]
    with torch.no_grad():
        assert torch.equal(loaded.extract(arch, keep_bn=True)(images), direct.extract(arch, keep_bn=True)(images))


def test_convert_oqa_cli_errors(checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    assert main(["convert-oqa", str(tmp_path / "none.pth"), "--bits", "4", "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    bad = corrupted(checkpoints, tmp_path, lambda s: s.pop("first_conv.conv.weight"))
    assert main(["convert-oqa", bad, "--bits", "4", "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stem.conv.weight" in err
    assert not (tmp_path / "o.pt").exists()
