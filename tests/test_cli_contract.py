"""What every command of the CLI promises, checked for every command so that a new one keeps it:
its --help states the defaults it runs with; it refuses an output path it cannot write before
any work; and a wrong input (a file of another kind, a folder for a file, a file for a folder,
a device that is not there) is one line naming it, exit 2, no traceback."""
import argparse
import re

import pytest
import torch
from test_evaluate import tiny_run

from oqat.cli.parser import build_parser, main
from oqat.config.settings import ExperimentConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def commands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def one_line_error(capsys, command: str, argv) -> str:
    assert main([command, *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"oqat {command}: error: ") and "Traceback" not in err, err
    return err


# --- --help states what the command does ------------------------------------------------------------
def test_every_help_default_is_the_default_the_command_runs_with():
    defaults = ExperimentConfig()
    for name, parser in commands().items():
        for action in parser._actions:
            said = re.search(r"default:? ([^;)]+)\)?$", action.help or "")
            if "." in action.dest:  # a config field: its default, or the run's where the file has a run
                section, field = action.dest.split(".")
                value = getattr(getattr(defaults, section), field)
                if isinstance(value, (bool, list)):
                    continue
                assert said, f"oqat {name} {action.option_strings}: help names no default"
                assert said[1].removeprefix("the run's that wrote the file, else ") == str(value), (name, action.help)
            elif action.default not in (None, False, argparse.SUPPRESS, []) and action.dest not in ("func", "help"):
                stated = f"{action.default} (default)" in action.help or (said and said[1] == str(action.default))
                assert stated, (name, action.option_strings, action.help)


def test_commands_on_a_runs_file_say_so_in_help():
    for name in ("eval", "search", "sample", "export"):
        text = commands()[name].format_help()
        assert "default: the run's that wrote the file, else 500" in re.sub(r"\s+", " ", text), name


# --- outputs are checked before any work ------------------------------------------------------------
# Each command with an output, with a missing input: the output must be refused first.
OUTPUT_ARGV = {
    "convert-oqa": ["missing.pth", "--bits", 4], "inherit": ["missing.pt", "--bits", 2], "analyze": ["missing-run"],
    "export": ["missing.pt"], "latency": ["missing.pt"], "latency-model": ["missing.pt"], "search": ["missing.pt"],
    "sample": ["missing.pt", "--n", 2],
}


def test_every_output_option_is_declared_and_checked():
    for name, parser in commands().items():
        outputs = parser.get_default("outputs") or {}
        named = {a.dest for a in parser._actions if a.dest in ("out", "table")}
        assert named == set(outputs), f"oqat {name}: output options not declared with add_output"
        assert bool(outputs) == (name in OUTPUT_ARGV), name


@pytest.mark.parametrize("command", sorted(OUTPUT_ARGV))
def test_a_bad_output_path_is_refused_before_any_work(command, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    for flag, folder in commands()[command].get_default("outputs").values():
        bad = [tmp_path / ("file" if folder else "folder"), tmp_path / "file" / "under"]
        for path in bad:
            err = one_line_error(capsys, command, [*OUTPUT_ARGV[command], flag, path])
            assert f"{flag} '{path}'" in err and "expected" in err or "cannot be written" in err, err


# --- wrong inputs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict:
    """Files of the kinds a user may hand over by mistake."""
    root = tmp_path_factory.mktemp("kinds")
    (root / "a.json").write_text('{"a": 1}')
    (root / "model.onnx").write_bytes(bytes(range(256)) * 2)
    (root / "empty.pt").write_bytes(b"")
    (root / "notes.md").write_text("# notes\n\n- [x\n")
    (root / "folder").mkdir()
    return {name: root / name for name in ("a.json", "model.onnx", "empty.pt", "notes.md", "folder", "missing")}


NETWORK_COMMANDS = {"eval": [], "search": [], "sample": ["--n", 2, "--out", "{tmp}/p.json"],
                    "export": ["--out", "{tmp}/o"], "latency": [], "inherit": ["--bits", 2, "--out", "{tmp}/i.pt"],
                    "convert-oqa": ["--bits", 4, "--out", "{tmp}/c.pt"]}


@pytest.mark.parametrize("command", sorted(NETWORK_COMMANDS))
def test_a_wrong_network_file_is_one_line_naming_it(command, kinds, tmp_path, capsys):
    rest = [str(a).format(tmp=tmp_path) for a in NETWORK_COMMANDS[command]]
    for path in kinds.values():
        assert f"'{path}'" in one_line_error(capsys, command, [path, *rest])


@pytest.mark.parametrize("command", ["run", "train", "config check"])
def test_a_wrong_config_file_is_one_line_naming_it(command, kinds, capsys):
    command, *first = command.split()
    for name, path in kinds.items():
        if name != "empty.pt":  # an empty YAML is the defaults
            assert f"'{path}'" in one_line_error(capsys, command, [*first, path])


def test_a_file_where_a_folder_is_expected_and_back(kinds, capsys):
    png = kinds["folder"] / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    for argv in (["predict", kinds["a.json"], png], ["analyze", kinds["a.json"]], ["analyze", kinds["folder"]]):
        assert f"'{argv[1]}'" in one_line_error(capsys, argv[0], argv[1:])
    for option in ("--latency-table", "--pairs"):
        for path in (kinds["folder"], kinds["model.onnx"], kinds["missing"]):
            err = one_line_error(capsys, "search", [tiny_run(), option, path, "--budget", "bitops<=1e9"])
            assert str(path) in err
    for path in (kinds["folder"], kinds["model.onnx"], kinds["notes.md"]):
        assert str(path) in one_line_error(capsys, "cost", ["--arch", path])
        assert str(path) in one_line_error(capsys, "eval", [tiny_run(), "--arch", path])


ABSENT = [d for d in ("cuda", "cuda:7", "gpu", "mps", "tpu")
          if d not in ("cuda", "cuda:7") or torch.cuda.device_count() < (8 if d == "cuda:7" else 1)]


@pytest.mark.parametrize("command", ["eval", "search", "sample"])
def test_a_device_that_is_not_there_is_one_line(command, tmp_path, capsys):
    rest = ["--n", 2, "--out", tmp_path / "p.json"] if command == "sample" else []
    for device in ABSENT:
        assert f"--device '{device}'" in one_line_error(capsys, command, [tiny_run(), "--device", device, *rest])
