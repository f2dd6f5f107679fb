"""The Python API is right by default: extraction recalibrates BN or says it did not, and
every function taking an architecture takes each of its forms."""
import json
import warnings

import pytest
import torch

import oqat
from oqat.data.batches import calib_batches
from oqat.data.config import DataConfig
from oqat.data.splits import load_splits
from oqat.nets.supernet import Supernet, UncalibratedWarning, UntrainedWarning
from oqat.space.builtin import MINI
from oqat.train.evaluate import prepare_subnet, recalibrate_bn

ARCH = "mini:r24:k3e2-k5e3.k7e4-k3e2-k3e2"
DATA = DataConfig(name="synthetic", val_size=64, synthetic_train=128)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = Supernet(MINI, 2)
    for q in net.quantizers():
        q.step.data.fill_(0.1)
    return net.eval()


def bn_means(sub) -> torch.Tensor:
    return torch.cat([m.running_mean for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d)])


def test_extract_with_calib_recalibrates_and_without_says_it_did_not(net):
    calib = calib_batches(load_splits(DATA).train, DATA, 64, seed=0)
    sub = net.extract(ARCH, calib=calib)
    assert not sub.training
    by_hand = net.extract(ARCH, keep_bn=True).to(memory_format=torch.channels_last)  # the layout extract takes
    recalibrate_bn(by_hand, calib)
    torch.testing.assert_close(bn_means(sub), bn_means(by_hand))
    with pytest.warns(UncalibratedWarning, match="not recalibrated"):
        raw = net.extract(ARCH)
    assert not torch.allclose(bn_means(raw), bn_means(sub))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.extract(ARCH, keep_bn=True)
        net.train()
        net.extract(ARCH)  # training mode: BN normalises with each batch's statistics
        net.eval()


def test_every_function_taking_an_architecture_takes_every_form(net, tmp_path):
    arch = oqat.Arch.parse(ARCH)
    (tmp_path / "a.json").write_text(arch.to_json())
    forms = [ARCH, arch.to_json(), str(tmp_path / "a.json"), arch.to_dict()]
    for form in forms:
        assert oqat.arch_metrics(form, "mini", 2) == oqat.arch_metrics(arch, "mini", 2)
        assert oqat.arch_metrics(form, bits=2) == oqat.arch_metrics(arch, bits=2)
        assert net.extract(form, keep_bn=True).arch == arch
        assert oqat.Subnet("mini", form).arch == arch
        assert MINI.check(form) == arch
    assert prepare_subnet(net, ARCH, DATA, load_splits(DATA), 32).arch == arch
    with pytest.raises(ValueError, match="'r' is 30"):
        oqat.arch_metrics("mini:r30:k3e2-k3e2-k3e2-k3e2", "mini")


def test_the_cost_module_is_not_shadowed_by_a_function():
    import oqat.nets.cost
    assert oqat.arch_metrics is oqat.nets.cost.arch_metrics and oqat.nets.cost.METRICS == ("macs", "params", "bitops",
                                                                                 "flops_q", "size_bits")


def test_untrained_names_the_choices_training_never_ran(net):
    trained = Supernet(MINI, 2, elastic=("ks", "e", "d"))
    assert trained.untrained(ARCH) == ["r 24 (trained: 28)"]
    assert trained.untrained(ARCH.replace("r24", "r28")) == []
    trained.set_elastic_(("d", "r"))
    # Blocks beyond a stage's depth hold the smallest kernel once normalised: only blocks that run count.
    assert trained.untrained("mini:r20:k7e4-k7e4-k7e4-k7e4") == []
    assert trained.untrained(ARCH) == ["ks 3, 5 (trained: 7)", "e 2, 3 (trained: 4)"]


def test_every_network_a_user_hands_over_opens_one_way(net, tmp_path):
    from oqat.deploy import export
    from oqat.files import checkpoints
    sub = net.extract(oqat.Arch.parse(ARCH, MINI), keep_bn=True).eval()
    paths = {"supernet": str(tmp_path / "s.pt"), "subnet": str(tmp_path / "n.pt"), "packed": str(tmp_path / "p.oqpk")}
    checkpoints.save_supernet(net, paths["supernet"])
    checkpoints.save_subnet(sub, paths["subnet"])
    checkpoints.save_packed(sub, paths["packed"])
    export.export(sub, str(tmp_path / "x"), speed_rounds=0)
    for source in (paths["subnet"], paths["packed"], str(tmp_path / "x")):
        opened, _ = oqat.load_model(source)
        assert isinstance(opened, oqat.Subnet) and oqat.subnet_arch(opened, None, source) == sub.arch
        with pytest.raises(ValueError, match=f"^--arch {MINI.smallest()} differs from the subnet in '{source}'"):
            oqat.subnet_arch(opened, MINI.smallest().to_json(), source)
    supernet, _ = oqat.load_model(paths["supernet"])
    assert oqat.subnet_arch(supernet, ARCH, paths["supernet"]) == sub.arch
    with pytest.raises(ValueError, match="is a supernet: give --arch to choose the subnet"):
        oqat.subnet_arch(supernet, None, paths["supernet"])
    with pytest.raises(ValueError, match=f"holds export folders; pass one of them: {tmp_path / 'x'}$"):
        oqat.load_model(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is a folder; expected a supernet, subnet or packed file, or an export"):
        oqat.load_model(str(tmp_path / "empty"))
    for other in ("model.onnx", "arch.json", "MODEL_CARD.md"):  # files of an export that are no network file
        with pytest.raises(ValueError, match=f"not a network file oqat writes .*; pass its export folder '{tmp_path}"):
            oqat.load_model(str(tmp_path / "x" / other))


def test_a_subnet_file_round_trips_with_its_data_and_a_supernet_is_refused(net, tmp_path, capsys):
    from oqat.cli import main
    from oqat.deploy import export
    from oqat.files import checkpoints
    splits = load_splits(DATA)
    sub = net.extract(ARCH, calib=calib_batches(splits.train, DATA, 64, seed=0))
    path = str(tmp_path / "sub.pt")
    checkpoints.save_subnet(sub, path, data=DATA)
    back = checkpoints.load_subnet(path)
    assert back.arch == sub.arch and back.bits == sub.bits
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), sub.state_dict().values()))
    assert oqat.load_model(path)[1]["data"] == DATA
    with pytest.raises(TypeError, match="save_subnet takes a Subnet .*; a supernet is saved with save_supernet"):
        checkpoints.save_subnet(net, path)
    # Its data goes with it: eval needs no --dataset, and a file without data is refused, not given Fashion-MNIST.
    assert main(["eval", path, "--json"]) == 0 and '"top1"' in capsys.readouterr().out
    checkpoints.save_subnet(sub, str(tmp_path / "bare.pt"))
    assert main(["eval", str(tmp_path / "bare.pt")]) == 2
    assert "records no data: name it (--dataset" in capsys.readouterr().err
    # An export's folder carries it too, and its arch.json the bits that `oqat cost` then costs.
    export.export(sub, str(tmp_path / "x"), speed_rounds=0, data=DATA)
    assert oqat.load_model(str(tmp_path / "x"))[1]["data"] == DATA
    assert main(["cost", "--arch", str(tmp_path / "x" / "arch.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == oqat.arch_metrics(ARCH, bits=2) != oqat.arch_metrics(ARCH, bits=4)
    assert main(["cost", "--arch", str(tmp_path / "x"), "--json", "--bits", "4"]) == 0
    assert json.loads(capsys.readouterr().out) == oqat.arch_metrics(ARCH, bits=4)


def test_extract_says_what_calib_is_and_warns_of_untrained_choices(net):
    with pytest.raises(TypeError, match=r"calib must be batches of \(images, labels\) .*calib_batches.*got int"):
        net.extract(ARCH, calib=1000)
    trained = Supernet(MINI, 2, elastic=("ks", "e", "d"))  # resolution held at 28
    trained.load_state_dict(net.state_dict())
    calib = calib_batches(load_splits(DATA).train, DATA, 32, seed=0)
    with pytest.warns(UntrainedWarning, match="runs r 24 \\(trained: 28\\), which this supernet never trained"):
        trained.eval().extract(ARCH, calib=calib)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained.extract(ARCH.replace("r24", "r28"), calib=calib)
        trained.extract(ARCH, keep_bn=True)  # latency and weight checks: accuracy not in question
