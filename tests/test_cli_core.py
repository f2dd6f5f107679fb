import json
import os
import subprocess
import sys

import pytest

from oqat.cli import main
from oqat.nets.cost import METRICS, arch_metrics
from oqat.space.arch import Arch
from oqat.space.builtin import MBV3

MINI_ARCH = "mini:r28:k3e2-k5e3.k7e4-k3e2-k3e2"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cost_table(capsys):
    code, out, err = run(capsys, "cost", "--arch", MINI_ARCH, "--bits", "2")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{MINI_ARCH}  (2-bit)"
    expected = arch_metrics(Arch.parse(MINI_ARCH), bits=2)
    rows = dict(line.strip().rsplit(None, 1) for line in lines[1:])
    assert list(rows) == [m.replace("size_bits", "size (KiB)") for m in METRICS]
    assert int(rows["macs"].replace(",", "")) == expected["macs"]
    assert int(rows["bitops"].replace(",", "")) == expected["bitops"]


@pytest.mark.parametrize("form", ["compact", "json", "file", "authors"])
def test_cost_json_from_every_arch_form(form, tmp_path, capsys):
    arch = MBV3.largest()
    text = {"compact": arch.to_str(), "json": arch.to_json(), "file": str(tmp_path / "a.json"),
            "authors": json.dumps({"ks": list(arch.ks), "e": list(arch.e), "d": list(arch.d), "r": [arch.r]})}[form]
    (tmp_path / "a.json").write_text(arch.to_json())
    code, out, err = run(capsys, "cost", "--space", "mbv3", "--arch", text, "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == arch_metrics(arch, "mbv3", 4)


def test_cost_bits_32(capsys):
    code, out, _ = run(capsys, "cost", "--arch", MINI_ARCH, "--bits", "32", "--json")
    result = json.loads(out)
    assert code == 0 and result["size_bits"] == result["params"] * 32


@pytest.mark.parametrize("argv,message", [
    (["--arch", "mbv3:r130:k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3-k3e3.k3e3"], "'r'"),
    (["--arch", "mbv3:r128:k3e3-k3e3"], "has 2 stages"),
    (["--arch", MINI_ARCH, "--space", "mbv3"], "space 'mini', not 'mbv3'"),
    (["--arch", MINI_ARCH, "--space", "nope"], "unknown search space 'nope'"),
    (["--arch", "nofile.json"], "not found"),
    (["--arch", "{bad"], "not valid JSON"),
])
def test_cost_errors_one_line_exit_2(argv, message, capsys):
    code, out, err = run(capsys, "cost", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("oqat cost: error:") and message in err


def test_cost_bad_bits_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["cost", "--arch", MINI_ARCH, "--bits", "9"])
    assert exit_.value.code == 2
    assert "bits must be 1..8 or 32" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_exit_status():
    exe = os.path.join(os.path.dirname(sys.executable), "oqat")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "oqat"]
    done = subprocess.run(cmd + ["cost", "--arch", "mini:r29:k3e2-k3e2-k3e2-k3e2"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "'r'" in done.stderr
