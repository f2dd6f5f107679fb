import json
import random

import numpy as np
import pytest
from test_evaluate import TINY, run_cli, tiny_run

from oqat.files.records import load_pairs
from oqat.search.predictor import Predictor, features, fit_and_score, quality
from oqat.space.builtin import MINI

pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(n: int, seed: int, noise: float = 0.3) -> list:
    """Architectures of `mini` with a known score: deeper stages and bigger kernels help,
    a higher resolution helps, plus seeded noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = MINI.sample(rng)
        score = 50 + 2 * sum(a.d) + 0.3 * a.r + sum(k for _, k, _ in MINI.active_blocks(a)[1:]) / 5
        out.append((a, score + rng.gauss(0, noise)))
    return out


def test_features_encode_only_active_blocks():
    arch = MINI.smallest()
    f = features(arch, MINI)
    n = MINI.num_blocks * 6 + len(MINI.stages) * 3 + len(MINI.resolutions) + 1
    assert f.shape == (n,)
    # one kernel and one expand flag per active block, one depth flag per stage, one resolution flag
    assert f[:-1].sum() == 2 * len(MINI.active_blocks(arch)[1:]) + len(MINI.stages) + 1


def test_predictor_ranks_held_out_architectures():
    model, q = fit_and_score(pairs(120, 0), MINI)
    assert q["n"] == 30 and q["kendall_tau"] > 0.7 and q["rmse"] < 2.0
    test = pairs(40, 1)
    qt = quality(model.predict([a for a, _ in test]), np.array([s for _, s in test]))
    assert qt["kendall_tau"] > 0.7
    rng = random.Random(2)
    shuffled = [s for _, s in pairs(120, 0)]
    rng.shuffle(shuffled)  # no signal: no ranking
    _, qs = fit_and_score([(a, s) for (a, _), s in zip(pairs(120, 0), shuffled)], MINI)
    assert qs["kendall_tau"] < 0.4


def test_predictor_needs_pairs():
    with pytest.raises(ValueError, match="at least 4"):
        fit_and_score(pairs(3, 0), MINI)
    with pytest.raises(ValueError, match="at least 2"):
        Predictor.fit([MINI.smallest()], [1.0], MINI)


def test_load_pairs_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"arch": MINI.smallest().to_str()}]))
    with pytest.raises(ValueError, match="'arch' and 'val_top1'"):
        load_pairs(str(path))
    path.write_text(json.dumps([{"arch": MINI.smallest().to_str(), "val_top1": 3}]))
    with pytest.raises(ValueError, match="p.json': architecture is from space 'mini', not 'evaltiny'"):
        load_pairs(str(path), TINY)
    with pytest.raises(ValueError, match="not found"):
        load_pairs(str(tmp_path / "none.json"))


def test_sample_cli_gathers_distinct_pairs_and_scores_the_predictor(capsys, tmp_path):
    out = tmp_path / "pairs.json"
    code, stdout, _ = run_cli(capsys, "sample", tiny_run(), "--n", 8, "--calib-images", 64, "--out", out)
    assert code == 0 and "Kendall tau" in stdout and "RMSE" in stdout
    points = json.loads(out.read_text())
    assert len(points) == len({p["arch"] for p in points}) == 8
    loaded = load_pairs(str(out), TINY)
    assert [s for _, s in loaded] == [p["val_top1"] for p in points]
    code, stdout, _ = run_cli(capsys, "search", tiny_run(), "--pairs", out, "--population", 4,
                              "--generations", 1, "--calib-images", 64, "--out", tmp_path / "s")
    assert code == 0 and "predicted only" in stdout
