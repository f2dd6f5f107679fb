"""The JSON files of a run and of an export, each format's writer beside its checked reader
(as `checkpoints.py` does for checkpoints), so the fields one writes are the fields the other reads:

    metrics.jsonl (a training's log)     MetricsWriter / read_metrics, last_epoch
    stage.json (a stage's wall time)     write_stage / read_stage
    pareto.json, evaluated.json          write_search / read_pareto, read_evaluated
    facts.json (an export's facts)       write_facts / read_facts
    latency table (oqat latency)         update_latency_table / load_latency_table
    (arch, val top-1) pairs              save_pairs / load_pairs (oqat sample; evaluated.json too)

Paths come from `layout.py`. A reader names the file and what is wrong in one ValueError line.
"""
import json
import os

from ..core import io
from ..core.io import read_json
from ..quant.precision import Precision
from ..space.arch import Arch
from ..space.structure import SearchSpace


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- metrics.jsonl: one JSON object a line, appended as training goes ---------------------------
def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl. A last line without its newline is one a crash cut
    short: it is left out (every complete line was flushed whole)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for n, line in enumerate(lines[:-1], 1):  # the part after the last newline: empty, or cut short
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "kind" not in record:
            raise ValueError(f"metrics file '{path}' line {n} is not a metrics record")
        records.append(record)
    return records


def last_epoch(path: str) -> dict | None:
    """The last per-epoch record of a metrics.jsonl (None: no file, or no epoch ended)."""
    if not os.path.isfile(path):
        return None
    return next((r for r in reversed(read_metrics(path)) if r["kind"] == "epoch"), None)


class MetricsWriter:
    """Appends records to a metrics.jsonl, each flushed whole. With `keep_until` (a resumed
    training's step) the records the file holds up to that step are kept, the rest (written
    after the last checkpoint by the run that stopped) dropped; without it the file starts empty."""

    def __init__(self, path: str, keep_until: int | None = None):
        kept = []
        if keep_until is not None and os.path.exists(path):
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= keep_until]
        io.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.path, self.file = path, open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as err:  # a line cut short here is dropped by read_metrics
            raise io.WriteError(f"cannot write '{self.path}': {err.strerror}") from None

    def close(self) -> None:
        self.file.close()


# --- stage.json ---------------------------------------------------------------------------------
def write_stage(path: str, wall_s: float) -> None:
    io.write_json(path, {"wall_s": wall_s})


def read_stage(path: str) -> float | None:
    """A finished stage's wall time in seconds (None: no record, as for a stage trained elsewhere)."""
    if not os.path.isfile(path):
        return None
    record = read_json(path, "stage record")
    if not isinstance(record, dict) or not _number(record.get("wall_s")):
        raise ValueError(f"stage record '{path}' must be a JSON object with a number wall_s")
    return float(record["wall_s"])


# --- a search's pareto.json and evaluated.json -------------------------------------------------
def _check_points(points, path: str, what: str) -> list[dict]:
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("arch"), str)
                                               and _number(p.get("val_top1")) for p in points):
        raise ValueError(f"{what} '{path}' must hold a JSON list of points with 'arch' (an architecture string) "
                         "and 'val_top1' (a number)")
    return points


def write_search(pareto_path: str, evaluated_path: str, summary: dict, evaluated: list[dict]) -> None:
    """`summary`: the search's settings and "front" (points); `evaluated`: every point scored."""
    io.write_json(pareto_path, summary)
    io.write_json(evaluated_path, evaluated)


def read_pareto(path: str) -> dict:
    summary = read_json(path, "search result")
    if not isinstance(summary, dict):
        raise ValueError(f"search result '{path}' must be a JSON object with a 'front'")
    _check_points(summary.get("front"), path, "search result")
    return summary


def read_evaluated(path: str) -> list[dict]:
    return _check_points(read_json(path, "search points"), path, "search points")


# --- facts.json of an export --------------------------------------------------------------------
FACTS = ("arch", "bits", "sizes", "dir")  # what every reader takes from an export's facts


def write_facts(path: str, facts: dict, folder: str) -> None:
    """`facts` (export.export_checkpoint's) with `folder`, the export folder as its reader names it."""
    io.write_json(path, {**facts, "dir": folder})


def read_facts(path: str) -> dict:
    facts = read_json(path, "export facts")
    if not isinstance(facts, dict) or not all(k in facts for k in FACTS):
        raise ValueError(f"export facts '{path}' must be a JSON object with {', '.join(FACTS)}")
    return facts


# --- latency table --------------------------------------------------------------------------------
def load_latency_table(path: str, space: SearchSpace, bits=None) -> dict:
    """A latency table as `oqat latency --table` writes it: {"bits", "device", "threads", "ms":
    {architecture string of `space`: milliseconds}}. Where `bits` is given it must be the
    table's: a 2-bit subnet's latency says nothing of a 4-bit one's."""
    table = read_json(path, "latency table")
    if not isinstance(table, dict) or set(table) != {"bits", "device", "threads", "ms"}:
        raise ValueError(f"latency table '{path}' must be a JSON object with bits, device, threads and ms "
                         "{arch string: ms}, as `oqat latency --table` writes it")
    if not (isinstance(table["bits"], (int, list)) and isinstance(table["device"], str)
            and isinstance(table["threads"], int)):
        raise ValueError(f"latency table '{path}': bits must be an integer (or a mixed precision's list of widths), "
                         "threads an integer, device a string")
    try:
        table["bits"] = Precision.of(table["bits"]).bits
    except ValueError as err:
        raise ValueError(f"latency table '{path}': {err}") from None
    if bits is not None and table["bits"] != bits:
        raise ValueError(f"latency table '{path}' holds {Precision.of(table['bits'])} timings; the supernet is "
                         f"{Precision.of(bits)}")
    if not isinstance(table["ms"], dict) or not table["ms"]:
        raise ValueError(f"latency table '{path}': ms must be a JSON object {{arch string: ms}}, not empty")
    ms = {}
    for text, value in table["ms"].items():
        arch = _arch_in(text, space, f"latency table '{path}'")
        if not _number(value) or not value >= 0:
            raise ValueError(f"latency table '{path}': {text} maps to {value!r}, expected milliseconds")
        ms[arch.to_str()] = float(value)
    return {**table, "ms": ms}


def update_latency_table(path: str, arch: str, ms: float, bits, device: str, threads: int,
                         space: SearchSpace | None = None) -> dict:
    """Set the ms of `arch` (a string of `space`'s, default the built-in space it names) in the
    latency table at `path` (created if missing) of `bits`-bit subnets timed on `device` with
    `threads` threads; a table of other bits, device or threads is refused: one table, one setting."""
    space = space or Arch.from_str(arch).checked_in
    here = {"bits": Precision.of(bits).bits, "device": device, "threads": threads}
    table = load_latency_table(path, space) if os.path.exists(path) else {**here, "ms": {}}
    if {k: table[k] for k in here} != here:
        raise ValueError(f"latency table '{path}' holds {Precision.of(table['bits'])} timings on {table['device']} "
                         f"with {table['threads']} thread(s); this is {Precision.of(bits)} on {device} with "
                         f"{threads}: give another table file")
    table["ms"][arch] = round(ms, 4)
    io.write_json(path, {**table, "ms": dict(sorted(table["ms"].items()))})
    return table


# --- (arch, val top-1) pairs ------------------------------------------------------------------------
def save_pairs(path: str, points: list[dict]) -> None:
    """Points are dicts with at least "arch" (string) and "val_top1" (the search's evaluated.json form)."""
    io.write_json(path, points)


def load_pairs(path: str, space: SearchSpace | None = None) -> list[tuple[Arch, float]]:
    """(arch, val top-1) pairs from a file written by `oqat sample` or a search's evaluated.json."""
    points = read_json(path, "pairs file")
    if not isinstance(points, list) or not all(
            isinstance(p, dict) and isinstance(p.get("arch"), str) and _number(p.get("val_top1")) for p in points):
        raise ValueError(f"pairs file '{path}' must be a JSON list of objects with 'arch' and 'val_top1' "
                         "(an architecture string and a number)")
    return [(_arch_in(p["arch"], space, f"pairs file '{path}'"), float(p["val_top1"])) for p in points]


def _arch_in(text: str, space: SearchSpace | None, where: str) -> Arch:
    try:
        return Arch.from_str(text, space)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
