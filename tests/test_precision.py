import pytest

from oqat.files.layout import RunLayout
from oqat.quant.precision import Precision


@pytest.mark.parametrize("bits,name,label,key", [(4, "4bit", "4-bit", 4), (32, "fp", "fp32", 32),
                                                 ((2, 3, 4), "mixed234", "mixed 2/3/4-bit", "mixed234")])
def test_a_precision_reads_back_from_every_form_it_writes(bits, name, label, key):
    p = Precision.of(bits)
    assert (p.bits, p.name, p.label, p.key, str(p)) == (bits, name, label, key, label)
    for form in (name, label, str(key), key, p.config, p):  # a results key reads back from JSON as text
        assert Precision.of(form) == p


def test_precisions_read_full_precision_then_widths_down_then_mixed():
    shuffled = [Precision.of(b) for b in ([2, 4], 2, 32, 4, [2, 3, 4], 3)]
    assert [p.name for p in sorted(shuffled, key=lambda p: p.order)] == \
        ["fp", "4bit", "3bit", "2bit", "mixed234", "mixed24"]


def test_a_mixed_precision_is_its_sorted_distinct_widths_and_names_its_folders():
    assert Precision.of([4, 2, 3]).bits == (2, 3, 4) and Precision.of([4, 2]).widths == (2, 4)
    assert RunLayout("r").stage(4, [4, 2, 3]).root == RunLayout("r").stage(4, "mixed234").root == "r/stages/4-mixed234"
    for bad in ([4], [2, 2], 9, "mixed", "four"):
        with pytest.raises(ValueError):
            Precision.of(bad)
