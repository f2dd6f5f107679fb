"""Architecture files: an `Arch` from whatever a user hands over as text (an export folder,
whose arch.json it reads, or any form `Arch.parse` reads), and the bits an export's arch.json
records beside it."""
import os

from ..core.io import read_json
from ..space.arch import Arch
from ..space.structure import SearchSpace
from .layout import ExportLayout


def read_arch(text: str, space: SearchSpace | None = None) -> Arch:
    """An architecture from an export folder (its arch.json), a JSON file path, a JSON string or
    the compact string, checked against `space` (default: the built-in space it names)."""
    text = text.strip()
    return Arch.parse(ExportLayout(text).arch if os.path.isdir(text) else text, space)


def arch_bits(text: str):
    """The network's bits an architecture file records (an export's arch.json: "bits"), else None."""
    text = text.strip()
    path = ExportLayout(text).arch if os.path.isdir(text) else text
    if text.startswith("{") or not os.path.isfile(path):
        return None
    data = read_json(path, "architecture file")
    return data.get("bits") if isinstance(data, dict) else None
