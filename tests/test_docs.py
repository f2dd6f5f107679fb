"""Every code block of README.md and docs/*.md runs as it is written. Python blocks run in a
folder laid out as the demo's run (runs/fashion-mnist/...: small untrained `mini` networks on
synthetic 28 px data; `images` is a batch of normalised inputs, which blocks take as given);
YAML configs load; shell lines run where they are `oqat config` (in that folder, beside the
YAML a document wrote before them and a small image folder), and otherwise name commands,
options and files that exist."""
import contextlib
import os
import re
import shlex

import pytest
import torch
from torchvision.datasets import FashionMNIST

from oqat.cli.parser import build_parser, main
from oqat.config.settings import ExperimentConfig
from oqat.core import typed
from oqat.data.config import DataConfig
from oqat.deploy import export
from oqat.files import checkpoints, records
from oqat.files.layout import ExportLayout
from oqat.nets.supernet import Supernet
from oqat.space.builtin import MINI

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", *sorted(f"docs/{n}" for n in os.listdir(os.path.join(REPO, "docs")) if n.endswith(".md"))]
DATA = DataConfig(name="synthetic", val_size=64, synthetic_train=1064)  # the README calibrates on 1000
ARCH = "mini:r28:k3e2-k5e3.k7e4-k3e2-k3e2"


def blocks(doc: str) -> list[tuple[str, str, int]]:
    """(language, code, line of the opening fence) of each fenced block of `doc`."""
    text = open(os.path.join(REPO, doc), encoding="utf-8").read()
    return [(m["lang"], m["code"], text[:m.start()].count("\n") + 1)
            for m in re.finditer(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```", text, re.S | re.M)]


BLOCKS = [pytest.param(doc, lang, code, id=f"{doc}:{line}") for doc in DOCS for lang, code, line in blocks(doc)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A folder as the demo leaves it, in miniature, with the repository's configs and scripts."""
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    net = Supernet(MINI, 2)
    for q in net.quantizers():
        q.step.data.fill_(0.1)
    net.eval()
    checkpoints.save_supernet(net, str(root / "runs/fashion-mnist/stages/3-2bit/supernet.pt"),
                              {"data": typed.to_dict(DATA)})
    folder = str(root / "runs/fashion-mnist/export/2bit-M")
    facts = export.export(net.extract(ARCH, keep_bn=True), folder, speed_rounds=0, preprocess={
        "channels": 1, "resize": 28, "crop": None, "size": 28, "mean": [0.286], "std": [0.353]},
        classes=tuple(FashionMNIST.classes))
    records.write_facts(ExportLayout(folder).facts, facts, folder)
    (root / "shoe.png").write_bytes(_png())  # the image the deployment examples classify
    for name in ("configs", "scripts"):
        os.symlink(os.path.join(REPO, name), root / name)
    for split in ("train", "val"):  # docs/own-data.md's my-images/, two classes of two images
        for cls in ("cat", "dog"):
            (root / "my-images" / split / cls).mkdir(parents=True)
            for i in range(2):
                (root / "my-images" / split / cls / f"{i}.png").write_bytes(_png())
    return root


def _png() -> bytes:
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(out, "PNG")
    return out.getvalue()


@contextlib.contextmanager
def inside(folder):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.mark.parametrize("doc,lang,code", BLOCKS)
def test_every_code_block_runs_as_written(doc, lang, code, demo, capsys):
    if lang == "python":
        images = torch.randn(2, MINI.in_channels, 28, 28)
        with inside(demo):
            exec(compile(code, doc, "exec"), {"__name__": "__docs__", "images": images})
    elif lang == "yaml":
        name = re.match(r"# (\S+\.yaml)\n", code)  # a config the document's later commands use
        path = demo / (name[1] if name else "block.yaml")
        path.write_text(code)
        typed.load(ExperimentConfig, str(path))
    elif lang == "bash":
        for line in code.splitlines():
            _shell_line(line.split("  #")[0].strip(), demo, capsys)


def _shell_line(line: str, demo, capsys) -> None:
    words = shlex.split(line.replace('"$ARCH"', ARCH))
    if not words or "=" in words[0] or words[0] in ("cat", "ls", "python"):  # shell itself, or the run's outputs
        return
    if words[0] == "bash":
        assert os.path.isfile(os.path.join(REPO, words[1])), line
        return
    if words[0] != "oqat":
        assert os.path.isfile(os.path.join(REPO, words[0])) or os.path.basename(words[0]) in ("oqat", "ruff"), line
        if os.path.basename(words[0]) != "oqat":
            return
    argv = words[1:]
    if argv[0] == "config":
        with inside(demo):
            assert main(argv) == 0, capsys.readouterr().err
        return
    with pytest.raises(SystemExit) if "-h" in argv else contextlib.nullcontext():
        build_parser().parse_args(argv)  # commands and options exist; running them is their own tests' work
