import dataclasses
import json
import random

import pytest

import oqat
from oqat.space.arch import Arch
from oqat.space.builtin import MBV3, MINI, get_space
from oqat.space.structure import make_divisible


def mbv3(**changes):
    fields = dict(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r=128)
    fields.update(changes)
    return MBV3.check(Arch(**fields))


def test_keyword_construction_from_package():
    arch = MBV3.check(oqat.Arch(ks=[7] * 20, e=[6] * 20, d=[4] * 5, r=224))
    assert arch == MBV3.largest() == MBV3.arch(ks=[7] * 20, e=[6] * 20, d=[4] * 5, r=224)
    assert arch.space == "mbv3"


@pytest.mark.parametrize("changes,field,allowed", [
    (dict(ks=[3] * 19), "'ks'", "20 entries"),
    (dict(e=[3] * 21), "'e'", "20 entries"),
    (dict(d=[2] * 4), "'d'", "5 entries"),
    (dict(ks=[3] * 19 + [4]), "'ks'", "allowed: 3, 5, 7"),
    (dict(e=[6] * 19 + [5]), "'e'", "allowed: 3, 4, 6"),
    (dict(d=[2, 3, 4, 5, 2]), "'d'", "allowed: 2, 3, 4"),
    (dict(d=[1, 2, 2, 2, 2]), "'d'", "allowed: 2, 3, 4"),
    (dict(r=130), "'r'", "128..224 step 4"),
    (dict(r=228), "'r'", "128..224 step 4"),
    (dict(r=True), "'r'", "128..224"),
    (dict(ks="3" * 20), "'ks'", "list of 20"),
    (dict(e=3), "'e'", "list of 20"),
])
def test_validation_names_field_and_allowed_values(changes, field, allowed):
    with pytest.raises(ValueError) as err:
        mbv3(**changes)
    assert field in str(err.value) and allowed in str(err.value)
    assert "\n" not in str(err.value)


def test_mini_resolution_error_lists_the_grid():
    with pytest.raises(ValueError, match=r"'r'.*20, 24, 28"):
        MINI.arch(ks=[3] * 12, e=[2] * 12, d=[1] * 4, r=30)


def test_unknown_space():
    with pytest.raises(ValueError, match="unknown search space 'nope'.*mbv3, proxyless, mini"):
        Arch.parse("nope:r128:k3e3")
    with pytest.raises(ValueError, match="unknown search space"):
        get_space("resnet")


@pytest.mark.parametrize("space", [MBV3, MINI])
def test_round_trips(space, tmp_path):
    rng = random.Random(0)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(30)]:
        assert Arch.from_str(arch.to_str()) == arch
        assert Arch.from_json(arch.to_json()) == arch
        assert Arch.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
        assert Arch.parse(arch.to_str()) == arch
        assert Arch.parse(arch.to_json()) == arch
        assert str(arch) == arch.to_str()
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    assert Arch.parse(str(path)) == arch


def test_compact_string_form():
    arch = mbv3(ks=[3, 5, 7, 7] + [3] * 16, e=[4, 6, 3, 3] + [3] * 16, d=[3, 2, 2, 2, 4], r=160)
    text = arch.to_str()
    assert text.startswith("mbv3:r160:k3e4.k5e6.k7e3-k3e3.k3e3-")
    assert text.count("-") == 4 and text.count("k") == 13
    mini = Arch.parse("mini:r28:k3e2-k5e3.k7e4-k3e2-k3e2")
    assert mini.d == (1, 2, 1, 1) and mini.r == 28 and mini.ks[3:5] == (5, 7) and mini.e[3:5] == (3, 4)


def test_authors_dict_form_with_list_resolution():
    rng = random.Random(3)
    ks = [rng.choice((3, 5, 7)) for _ in range(20)]
    e = [rng.choice((3, 4, 6)) for _ in range(20)]
    arch = Arch.from_dict({"ks": ks, "e": e, "d": [4, 3, 2, 4, 2], "r": [176]})
    assert arch.space == "mbv3" and arch.r == 176 and arch.d == (4, 3, 2, 4, 2)
    assert arch.ks[:4] == tuple(ks[:4])
    assert Arch.parse(json.dumps({"ks": ks, "e": e, "d": [4, 3, 2, 4, 2], "r": [176]})) == arch


def test_inactive_entries_are_normalised():
    a = mbv3(ks=[5, 7, 7, 7] + [3] * 16, e=[6, 6, 6, 6] + [3] * 16, d=[2, 2, 2, 2, 2])
    b = mbv3(ks=[5, 7, 3, 5] + [3] * 16, e=[6, 6, 4, 3] + [3] * 16, d=[2, 2, 2, 2, 2])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.ks[:4] == (5, 7, 3, 3) and a.e[:4] == (6, 6, 3, 3)
    c = mbv3(ks=[5, 7, 7, 7] + [3] * 16, e=[6, 6, 6, 6] + [3] * 16, d=[3, 2, 2, 2, 2])
    assert c != a


@pytest.mark.parametrize("space", [MBV3, MINI])
def test_sampling_is_deterministic_and_valid(space):
    one = [space.sample(random.Random(42)) for _ in range(3)]
    assert one[0] == one[1] == one[2]
    rng_a, rng_b = random.Random(5), random.Random(5)
    seq_a = [space.sample(rng_a) for _ in range(20)]
    assert seq_a == [space.sample(rng_b) for _ in range(20)]
    assert len(set(seq_a)) > 15
    for arch in seq_a:
        assert arch.space == space.name and arch.r in space.resolutions
        assert set(arch.d) <= set(space.depths)


def test_sampling_does_not_touch_global_random():
    random.seed(1)
    expected = random.random()
    random.seed(1)
    MBV3.sample(random.Random(0))
    assert random.random() == expected


def test_sample_distinct_keeps_the_first_n_distinct_draws():
    rng = random.Random(3)
    draws = list(dict.fromkeys(MINI.sample(rng) for _ in range(200)))
    assert len(draws) > 10 and MINI.sample_distinct(random.Random(3), 10) == draws[:10]
    resolutions = MINI.elastic_in(["r"])  # one architecture per resolution
    got = resolutions.sample_distinct(random.Random(0), len(MINI.resolutions) + 5)
    assert sorted(a.r for a in got) == sorted(MINI.resolutions)
    assert MINI.sample_distinct(random.Random(0), 0) == []


@pytest.mark.parametrize("space", [MBV3, MINI])
def test_largest_and_smallest(space):
    big, small = space.largest(), space.smallest()
    assert set(big.ks) == {max(space.kernel_sizes)} and set(big.e) == {max(space.expand_ratios)}
    assert set(big.d) == {max(space.depths)} and big.r == max(space.resolutions)
    assert set(small.ks) == {min(space.kernel_sizes)} and set(small.e) == {min(space.expand_ratios)}
    assert set(small.d) == {min(space.depths)} and small.r == min(space.resolutions)


def test_active_blocks():
    arch = mbv3(ks=[5] * 20, e=[4] * 20, d=[2, 3, 4, 2, 3])
    blocks = MBV3.active_blocks(arch)
    assert blocks[0] == (0, 3, 1)  # the fixed first block
    assert len(blocks) == 15
    assert [b[0] for b in blocks[1:6]] == [1, 2, 5, 6, 7]
    assert all(k == 5 and e == 4 for _, k, e in blocks[1:])


def test_mbv3_space_matches_the_paper():
    assert [s.width for s in MBV3.stages] == [24, 40, 80, 112, 160]
    assert [s.stride for s in MBV3.stages] == [2, 2, 2, 1, 2]
    assert [s.act for s in MBV3.stages] == ["relu", "relu", "h_swish", "h_swish", "h_swish"]
    assert [s.se for s in MBV3.stages] == [False, True, False, True, True]
    assert MBV3.resolutions == tuple(range(128, 225, 4)) and MBV3.num_classes == 1000
    assert MBV3.mid_channels(24, 3) == 72 and MBV3.mid_channels(40, 4) == 160
    assert make_divisible(20) == 24 and make_divisible(10) == 16


@pytest.mark.parametrize("text,match", [
    ("mbv3:160:k3e3", "not of the form"),
    ("mbv3:r160:k3e3-k3e3", "has 2 stages"),
    ("mbv3:r160:k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3ee3.k3e3", "not kKeE"),
    ("mbv3:r160:k3e3.k3e3.k3e3.k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3", "more than 4 blocks"),
    ("mbv3:r160:k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3", "'d'"),
    ("mbv3:r160:k9e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3", "'ks'"),
    ("mbv3:r161:k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3", "'r'"),
    ("foo:r160:k3e3", "unknown search space"),
    ("{not json", "not valid JSON"),
    ('{"ks": [3], "e": [3], "d": [2]}', "missing: r"),
    ('{"ks": [3], "e": [3], "d": [2], "r": 128, "x": 1}', "unknown: x"),
    ("[1, 2]", "not of the form"),
    ("missing_file.json", "not found"),
    ("", "not of the form"),
])
def test_bad_strings(text, match):
    with pytest.raises(ValueError, match=match):
        Arch.parse(text)


def test_json_must_be_an_object():
    with pytest.raises(ValueError, match="must be an object"):
        Arch.from_json("[1, 2]")


def test_reading_a_file_registers_no_space(tmp_path):
    from oqat.files.checkpoints import load_supernet, save_supernet
    from oqat.nets.supernet import Supernet
    from oqat.space.builtin import SPACES
    from oqat.space.structure import SearchSpace, Stage, mbv3_head

    tiny = SearchSpace(name="tiny-file", stem_width=8, stem_stride=2, first_block=Stage(8, 1, "relu", False),
                       stages=(Stage(16, 2, "relu", False),), kernel_sizes=(3,), expand_ratios=(2,), depths=(1,),
                       resolutions=(16,), head=mbv3_head(16, 32), in_channels=1, num_classes=3)
    save_supernet(Supernet(tiny, 4), str(tmp_path / "s.pt"))
    before = dict(SPACES)
    net = load_supernet(str(tmp_path / "s.pt"))[0]
    assert SPACES == before and net.space == tiny
    arch = Arch.parse("tiny-file:r16:k3e2", net.space)
    assert net.extract(arch).arch == arch
    with pytest.raises(ValueError, match="unknown search space 'tiny-file'"):
        Arch.parse("tiny-file:r16:k3e2")
    # Files written before the head was data name its two convs' widths.
    legacy = {k: v for k, v in MBV3.to_dict().items() if k != "head"} | {"final_expand": 960, "feature_mix": 1280}
    assert SearchSpace.from_dict(legacy) == MBV3


def test_block_list_is_the_one_layout():
    blocks = MBV3.blocks
    assert len(blocks) == 21 and (blocks[0].c_in, blocks[0].c_out, blocks[0].kernel_sizes, blocks[0].expand_ratios) \
        == (16, 16, (3,), (1,))
    assert [(b.c_in, b.c_out, b.stride) for b in blocks[1:6]] == [(16, 24, 2), (24, 24, 1), (24, 24, 1), (24, 24, 1),
                                                                  (24, 40, 2)]
    assert blocks[5].se and blocks[5].act == "relu" and blocks[9].act == "h_swish"
    assert blocks[5].mid_max == 24 * 6
    # A checked arch prints itself through the space's layout, also after a field is replaced.
    import dataclasses
    assert dataclasses.replace(MBV3.largest(), d=(2,) * 5).to_str().count("k") == 10


def test_a_checked_arch_is_not_checked_again_but_a_changed_one_is():
    a = MINI.largest()
    assert a.checked_in is MINI and MINI.check(a) is a
    changed = dataclasses.replace(a, r=99)  # replace drops the mark
    assert changed.checked_in is None
    with pytest.raises(ValueError, match="arch field 'r' is 99"):
        MINI.check(changed)
    other = dataclasses.replace(MINI, resolutions=(28,))  # an equal-named space checks for itself
    with pytest.raises(ValueError, match="arch field 'r' is 20"):
        other.check(MINI.smallest())


def test_elastic_in_holds_the_other_fields_at_the_largest():
    assert MINI.elastic_in(["ks", "e", "d", "r"]) == MINI
    part = MINI.elastic_in(["ks", "d"])
    assert part.resolutions == (28,) and part.expand_ratios == (4,) and part.kernel_sizes == MINI.kernel_sizes
    assert part.largest() == MINI.largest() and part.smallest().r == 28
    rng = random.Random(0)
    assert all(a.r == 28 and set(a.e) == {4} for a in (part.sample(rng) for _ in range(20)))
    assert MINI.elastic_in([]).smallest() == MINI.largest()
