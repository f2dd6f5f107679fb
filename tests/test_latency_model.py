import dataclasses
import json
import random

import pytest

from oqat.core.machine import cpu_model
from oqat.nets.supernet import Supernet
from oqat.runtime import binding, latency_model, model_file
from oqat.runtime.latency_model import LatencyModel, LatencyModelError, Part
from oqat.space.builtin import get_space

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mini2():
    """The mini space and its 2-bit latency model at 28 px (one round per network)."""
    space = get_space("mini")
    return space, latency_model.build(space, (2,), rounds=1, resolutions=(28,))


def test_the_measured_networks_cover_every_part_of_every_architecture(mini2):
    space, model = mini2
    rng = random.Random(0)
    for _ in range(200):
        arch = dataclasses.replace(space.sample(rng), r=28)
        parts = model.breakdown(arch)  # raises on a part the model has no time for
        assert len(parts) == len(space.active_blocks(arch)) + 3  # stem, blocks, head, overhead


def test_each_op_of_a_network_is_timed_under_its_part():
    net = Supernet(get_space("mini"), 3).eval()
    arch = net.space.check("mini:r24:k3e2.k5e3-k7e4-k5e2.k3e3.k7e2-k3e2")
    parts, overhead, whole = latency_model.measure_network(net, arch, 3, threads=1, batch=1, rounds=1)
    expected = latency_model.arch_parts(net.space, arch, 3)
    assert set(parts) == {p.key(24) for p in expected}
    assert all(ms > 0 for ms in parts.values()) and whole > 0
    # A block ends its stage exactly where the runtime's last conv of it writes codes itself.
    ops = binding.Model(data=model_file.to_bytes(net.extract(arch, keep_bn=True).eval()), threads=1).ops
    writes_codes = [o["codes"] is not None for o in ops if o["name"].endswith(".project")]
    assert writes_codes == [p.ends for p in expected[1:-1]]


def test_prediction_is_the_sum_of_its_parts_on_a_hand_built_model():
    space = get_space("mini")
    arch = space.check("mini:r24:k3e2-k5e3-k7e4.k3e2-k5e2")
    parts = latency_model.arch_parts(space, arch, 2)
    table = {}
    for n, p in enumerate(parts):  # r20: n ms, r28: 10 n ms; 24 px lies (576 - 400) / (784 - 400) of the way
        table[p.key(20)], table[p.key(28)] = float(n), 10.0 * n
    model = LatencyModel(space, (2,), cpu_model(), "avx2", 1, 1, (20, 28), table, overhead_ms=0.5)
    t = (24 * 24 - 20 * 20) / (28 * 28 - 20 * 20)
    expected = sum(n + t * 9 * n for n in range(len(parts))) + 0.5
    assert model.predict(arch) == pytest.approx(expected)
    assert [k for k, _ in model.breakdown(arch)] == [p.key(24) for p in parts] + ["overhead"]
    at28 = dataclasses.replace(arch, r=28)
    assert model.predict(at28) == pytest.approx(sum(10.0 * n for n in range(len(parts))) + 0.5)
    with pytest.raises(LatencyModelError, match="outside"):
        dataclasses.replace(model, resolutions=(20, 24)).predict(at28)
    with pytest.raises(LatencyModelError, match="no time for"):
        model.predict(arch, bits=4)


def test_a_mixed_architecture_adds_each_part_at_its_own_width():
    space = get_space("mini").with_bits((2, 4))
    arch = space.check("mini:r28:b2:k3e2b4-k5e3b2-k7e4b4.k3e2b2-k5e2b4:b4")
    parts = latency_model.arch_parts(space, arch, None)
    assert [p.bits for p in parts[1:]] == [arch.b[i] for i, _, _ in space.active_blocks(arch)] + [arch.b[-1]]
    assert parts[0] == Part("stem")


def test_the_file_round_trips_and_refuses_another_machine(mini2, tmp_path):
    _, model = mini2
    path = str(tmp_path / "lat.json")
    model.save(path)
    again = latency_model.load(path, get_space("mini"))
    assert again == model
    d = json.loads(open(path).read())
    for field, value, message in [("device", "Other CPU", "measured on Other CPU"),
                                  ("isa", "scalar" if model.isa != "scalar" else "avx2", "measured on"),
                                  ("runtime", "openvino", "runtime 'openvino'"),
                                  ("format", "x", "not a latency model"),
                                  ("threads", "2", "threads"),
                                  ("parts", {"stem:r28": -1.0}, "non-negative")]:
        bad = tmp_path / f"{field}.json"
        bad.write_text(json.dumps({**d, field: value}))
        with pytest.raises(LatencyModelError, match=message) as err:
            latency_model.load(str(bad))
        assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(LatencyModelError, match="models space 'mini', not 'mbv3'"):
        latency_model.load(path, get_space("mbv3"))
    assert latency_model.load(str(tmp_path / "device.json"), here=False).device == "Other CPU"


def test_a_stopped_build_resumes_where_it_was(tmp_path, monkeypatch):
    space = get_space("mini")
    partial = str(tmp_path / "lat.partial.json")
    measured, stop_at, real = [], [12], latency_model.measure_network

    def counting(net, arch, *args, **kwargs):
        measured.append(arch)
        if len(measured) == stop_at[0]:
            raise KeyboardInterrupt  # a stop in the middle of the build
        return real(net, arch, *args, **kwargs)

    monkeypatch.setattr(latency_model, "measure_network", counting)
    with pytest.raises(KeyboardInterrupt):
        latency_model.build(space, (2,), rounds=1, resolutions=(28,), partial=partial)
    measured.clear(), stop_at.clear()
    stop_at.append(0)
    model = latency_model.build(space, (2,), rounds=1, resolutions=(28,), partial=partial)
    assert len(measured) == len(latency_model.plan(space, (2,), (28,))) - 10  # kept every 10 networks
    assert model.isa == binding.default_isa()
