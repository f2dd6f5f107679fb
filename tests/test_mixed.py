"""Elastic bits (mixed precision): each block's bit-width is a field of the architecture, held
by the space, trained with one step per width, searched, costed, extracted, exported, loaded."""
import dataclasses
import json
import random

import numpy as np
import onnx
import pytest
import torch
from test_deploy import assert_same_codes, torch_codes
from test_export import assert_parity, make_subnet

from oqat.config.settings import ExperimentConfig
from oqat.core import typed
from oqat.deploy import export, runners
from oqat.files import checkpoints
from oqat.nets.cost import arch_cost, arch_metrics, part_costs
from oqat.nets.supernet import Supernet
from oqat.quant.lsq import ElasticLSQ, elastic_bits_, inherit_step
from oqat.search.nsga import decode, encode
from oqat.space.arch import Arch
from oqat.space.builtin import MINI
from oqat.train.inherit import mixed_file
from oqat.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

MIXED = MINI.with_bits((2, 3, 4))
# Every block kind (expand or not, SE, residual), bits 2, 3 and 4, a 2-bit head.
ARCH = Arch.parse("mini:r24:b4:k3e2b3-k5e3b2.k3e4b4-k5e2b2-k3e3b3:b2", MIXED)


def test_bits_are_an_arch_field_in_both_forms_checked_by_the_space():
    assert str(ARCH) == "mini:r24:b4:k3e2b3-k5e3b2.k3e4b4-k5e2b2-k3e3b3:b2"
    assert Arch.from_json(ARCH.to_json(), MIXED) == ARCH and ARCH.to_dict()["b"] == list(ARCH.b)
    assert len(ARCH.b) == MIXED.num_blocks + 2 and ARCH.b[0] == 4 and ARCH.b[-1] == 2
    # Blocks beyond a stage's depth do not change the network: their bits are normalised.
    d = ARCH.to_dict()
    d["b"] = [4 if i == 3 else b for i, b in enumerate(d["b"])]  # block 3 is stage 1's third, inactive
    assert ARCH.d[0] == 1 and Arch.from_dict(d, MIXED) == ARCH
    with pytest.raises(ValueError, match="needs field 'b'"):
        MIXED.check(MINI.largest())
    with pytest.raises(ValueError, match="needs a space with elastic bits"):
        Arch.parse(str(ARCH), MINI)
    with pytest.raises(ValueError, match="'b' has 5"):
        MIXED.arch(ARCH.ks, ARCH.e, ARCH.d, ARCH.r, [5] * len(ARCH.b))
    assert set(MIXED.largest().b) == {4} and set(MIXED.smallest().b) == {2}
    rng = random.Random(0)
    assert len({MIXED.sample(rng).b for _ in range(20)}) > 1
    assert MINI.sample(random.Random(1)) == MINI.sample(random.Random(1))  # uniform spaces draw as before
    with pytest.raises(ValueError, match="bit_widths"):
        MINI.with_bits((4, 2))


def test_a_mixed_arch_reads_without_its_supernet_for_costing():
    alone = Arch.parse(str(ARCH))  # the widths it uses make its space's
    assert alone.b == ARCH.b and arch_metrics(alone) == arch_metrics(ARCH, MIXED)
    two = Arch.parse(str(ARCH).replace("b3", "b2").replace("b4", "b2"))
    assert arch_metrics(two)["bitops"] == arch_metrics(MINI.check(dataclasses.replace(ARCH, b=())), MINI, 2)["bitops"]


def test_each_part_is_costed_at_its_own_bits():
    uniform = MINI.check(dataclasses.replace(ARCH, b=()))
    for w in (2, 3, 4):  # every block at w: the uniform cost at w
        assert arch_metrics(dataclasses.replace(ARCH, b=(w,) * len(ARCH.b)), MIXED) == arch_metrics(uniform, MINI, w)
    parts = part_costs(ARCH, MIXED)
    assert sum((c for c, _ in parts[1:]), parts[0][0]) == arch_cost(uniform, MINI)
    want = sum(c.macs_q * b * b for c, b in parts)
    assert arch_metrics(ARCH, MIXED)["bitops"] == want
    assert arch_metrics(ARCH, MIXED)["size_bits"] == sum(c.params_q * b + c.params_fp * 32 for c, b in parts)
    bitops = [arch_metrics(a, MIXED)["bitops"] for a in (MIXED.smallest(), ARCH, MIXED.largest())]
    assert bitops == sorted(set(bitops))


def test_a_quantizer_keeps_one_step_per_width_shared_by_every_architecture():
    net = Supernet(MINI, 4)
    net.quantizers()[0].step.data.fill_(0.5)
    elastic_bits_(net, (2, 4))
    q = net.first_block.dw.conv.wq
    assert isinstance(q, ElasticLSQ) and set(dict(q.named_parameters())) == {"steps.2", "steps.4"}
    assert q.steps["2"].item() == pytest.approx(inherit_step(torch.tensor(0.5), 4, 2).item())  # bit inheritance
    q.bits = 2
    assert q.step is q.steps["2"]
    net = Supernet(MINI, (2, 3, 4))
    assert net.bits == (2, 3, 4) and net.space.bit_widths == (2, 3, 4)
    net.set_arch(ARCH)
    for (i, _, _), (block, _, _) in zip(MIXED.active_blocks(ARCH), net._active):
        assert {m.bits for m in block.modules() if isinstance(m, ElasticLSQ)} == {ARCH.b[i]}
    assert net.feature_mix.conv.wq.bits == ARCH.b[-1] == net.final_expand.conv.aq.bits


def test_the_extracted_subnet_computes_what_the_supernet_does_with_each_width_step():
    torch.manual_seed(0)
    net = Supernet(MINI, (2, 3, 4))
    net.init_steps_(torch.randn(16, 1, 28, 28))
    steps = {b: net.first_block.dw.conv.wq.steps[str(b)].item() for b in (2, 3, 4)}
    assert len(set(steps.values())) == 3  # each width's step from data
    net.eval()
    sub = net.extract(ARCH, keep_bn=True)
    assert sub.bits == (2, 3, 4) and sub.arch == ARCH
    assert sub.blocks[0].dw.conv.wq.step.item() == steps[ARCH.b[0]]
    x = torch.randn(8, 1, 24, 24)
    net.set_arch(ARCH)
    with torch.no_grad():
        assert torch.equal(net(x), sub(x))


def test_genome_carries_the_bits():
    for arch in (ARCH, MIXED.largest(), MIXED.sample(random.Random(4))):
        assert decode(encode(arch, MIXED), MIXED) == arch


def test_files_keep_the_bits_of_every_layer(tmp_path):
    net = make_subnet((2, 3, 4), ARCH)
    x = torch.randn(8, 1, 24, 24)
    with torch.no_grad():
        want = net(x)
    checkpoints.save_subnet(net, str(tmp_path / "sub.pt"))
    checkpoints.save_packed(net, str(tmp_path / "p.oqpk"))
    for loaded in (checkpoints.load_subnet(str(tmp_path / "sub.pt")),
                   checkpoints.load_packed(str(tmp_path / "p.oqpk"))):
        assert loaded.arch == ARCH
        with torch.no_grad():
            assert torch.equal(loaded(x), want)
    packed = checkpoints.read(str(tmp_path / "p.oqpk"), checkpoints.PACKED)["packed"]
    widths = {entry["bits"] for entry in packed.values()}
    assert widths == {2, 3, 4}


def test_export_gives_each_layer_its_own_width_and_runs_it():
    net = make_subnet((2, 3, 4), ARCH)
    model = export.build_onnx(net)
    assert model.opset_import[0].version == 25  # a 2-bit layer: INT2 codes
    kinds = {t.data_type for t in model.graph.initializer if t.name.endswith("w_codes")}
    assert kinds == {onnx.TensorProto.INT2, onnx.TensorProto.INT4}
    x = torch.randn(64, 1, 24, 24, generator=torch.Generator().manual_seed(2))
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    outputs = runners.Runner(model, "onnxruntime")._session.run(names, {"input": x.numpy()})
    assert_same_codes(torch_codes(net, x), {n.removesuffix(".a_q"): o for n, o in zip(names, outputs)})
    qonnx = export.build_qonnx(net)
    widths = {round(float(onnx.numpy_helper.to_array(i).item())) for i in qonnx.graph.initializer
              if i.name.endswith(".bitwidth")}
    assert widths == {2, 3, 4}
    x = torch.randn(1000, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    assert_parity(runners.parity(net, runners.Runner(export.build_onnx(net), "onnxruntime"), x))


TINY = ["data.name=synthetic", "data.val_size=32", "data.synthetic_train=224", "data.batch_size=16",
        "data.eval_batch_size=64", "train.calib_images=32", "train.sandwich_random=1", "train.log_every=4",
        "run.quiet=true", "train.epochs=1"]


def test_a_mixed_stage_starts_from_the_chain_and_trains_every_width(tmp_path):
    def run(name, *overrides):
        cfg = typed.load(ExperimentConfig, None, [*TINY, f"run.dir={tmp_path / name}", *overrides])
        train(cfg)
        return str(tmp_path / name / "supernet.pt")
    four = run("4", "train.bits=4")
    two = run("2", "train.bits=2", f"train.init_from={four}", "train.lr=0.05")
    start = str(tmp_path / "mixed-start.pt")
    net = mixed_file(two, [2, 3, 4], {4: four, 2: two}, start)
    chain = {b: checkpoints.load_supernet(p)[0] for b, p in ((4, four), (2, two))}
    q = net.blocks[0].dw.conv.wq
    for b, other in chain.items():  # each width's steps from the stage that trained it
        assert q.steps[str(b)].item() == other.blocks[0].dw.conv.wq.step.item()
    assert q.steps["3"].item() == pytest.approx(chain[2].blocks[0].dw.conv.wq.step.item() / 2)  # carried from 2
    before = {k: v.clone() for k, v in net.state_dict().items()}
    final, _ = checkpoints.load_supernet(run("mixed", "train.bits=[4, 2, 3]", f"train.init_from={start}",
                                             "train.lr=0.05"))
    assert final.bits == (2, 3, 4)
    moved = {k for k, v in final.state_dict().items() if not torch.equal(v, before[k])}
    assert {f"blocks.0.dw.conv.wq.steps.{b}" for b in (2, 4)} <= moved  # largest and smallest ran
    with pytest.raises(ValueError, match="two or more distinct widths"):
        typed.load(ExperimentConfig, None, ["train.bits=[4]"])
    with pytest.raises(ValueError, match="a mixed stage ends the chain"):
        typed.load(ExperimentConfig, None, ["stages=[{bits: 4}, {bits: [2, 4]}, {bits: 2}]"])
    assert np.isfinite(arch_metrics(final.space.sample(random.Random(0)), final.space)["bitops"])


@pytest.mark.slow
def test_oqat_run_trains_searches_and_exports_a_mixed_stage_and_recommends_from_every_front(tmp_path):
    from processes import start
    # The tiny 4-bit supernet predicts one class; its 2-bit smallest's gradients explode without clipping.
    proc = start(tmp_path, "stages=[{bits: 4, epochs: 1}, {bits: [2, 4], epochs: 1, lr: 0.05}]", "train.grad_clip=5")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "stage 1: mixed 2/4-bit supernet" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["fronts"]) == {"4", "mixed24"}
    for p in results["fronts"]["mixed24"]:
        arch = Arch.parse(p["arch"], MINI.with_bits((2, 4)))
        assert p["stage_bits"]["head"] == arch.b[-1]
        assert p["bitops"] == arch_metrics(arch, MINI.with_bits((2, 4)))["bitops"]
    best = [m for m in results["recommended"].values() if m]
    fronts = {(str(k), p["arch"]) for k, f in results["fronts"].items() for p in f}
    assert best and all((str(m["bits"]), m["arch"]) in fronts for m in best)
    rows = results["mixed_vs_uniform"]
    assert rows and all(r["mixed"] is None or r["mixed"]["bitops"] <= r["bitops"] * (1 + 1e-9) for r in rows)
    facts = next(iter(results["export"]["mixed24"].values()))
    assert (tmp_path / facts["dir"] / "model.onnx").is_file() and facts["arch"].count("b") > 2
    report = (tmp_path / "report.md").read_text()
    assert "## Where the bits went" in report and "## Recommended family" in report
