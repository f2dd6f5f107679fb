"""The numbers of a run do not change unless a change means them to: a tiny `oqat run`, once with
the code of REFERENCE and once with this tree, in separate processes on this machine, gives the
same accuracies to the last digit.

A change that reorganises the code (moving modules, splitting them, renaming) must leave every
number as it was. REFERENCE moves only with a change meant to alter the numbers, in the same
commit, saying why."""
import json
import os
import subprocess
import sys

import pytest
from processes import TINY_RUN

import oqat

REFERENCE = "a93d0c1bb19f2e6be865641c969755389abe0a94"
TREE = os.path.dirname(os.path.dirname(os.path.abspath(oqat.__file__)))

pytestmark = pytest.mark.slow


def _reference_tree(dest) -> str:
    """REFERENCE's files in `dest`, from the repository this tree is a checkout of."""
    def git(*args, **kwargs):
        return subprocess.run(["git", "-C", TREE, *args], capture_output=True, **kwargs)
    try:
        known = git("cat-file", "-e", f"{REFERENCE}^{{commit}}")
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if not os.path.exists(os.path.join(TREE, ".git")) or known.returncode != 0:
        pytest.skip(f"the reference commit {REFERENCE[:10]} is not in this checkout's repository "
                    "(a copy without .git, or a shallow clone)")
    archive = git("archive", "--format=tar", REFERENCE, "oqat")
    assert archive.returncode == 0, archive.stderr.decode()
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return str(dest)


def _accuracies(results, path="") -> dict:
    """Every top-1 and top-5 of results.json (each stage's, each front member's and family
    member's, each export's in each runtime), by its path in the file."""
    if isinstance(results, dict):
        items = results.items()
    elif isinstance(results, list):
        items = enumerate(results)
    else:
        return {}
    found = {}
    for key, value in items:
        where = f"{path}/{key}"
        if "top1" in str(key) or "top5" in str(key):
            found[where] = value
        elif key != "config":
            found.update(_accuracies(value, where))
    return found


def _run(code: str, folder) -> dict:
    env = {**os.environ, "PYTHONPATH": code, "OMP_NUM_THREADS": "1"}
    env.pop("OQAT_PAUSE_AT", None)
    done = subprocess.run([sys.executable, "-m", "oqat", "run", f"run.dir={folder}", *TINY_RUN, "--quiet"],
                          cwd=folder.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(folder / "results.json") as f:
        return _accuracies(json.load(f))


def test_a_tiny_run_gives_the_reference_commits_accuracies(tmp_path):
    reference = _run(_reference_tree(tmp_path / "reference"), tmp_path / "reference-run")
    now = _run(TREE, tmp_path / "run")
    assert reference, "results.json holds no accuracies"
    assert now == reference
