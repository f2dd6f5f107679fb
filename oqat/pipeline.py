"""`oqat run`: the whole pipeline a config describes, resumable stage by stage.

    stages (e.g. 4-bit supernet, inherit to 3 bits and train, inherit to 2 bits and train)
    -> search of each bit-width's final supernet (its S/M/L family named from the front)
    -> export of the family -> report

Layout of a run directory:
    config.yaml                  the resolved config
    stages/{i}-{bits}bit/        one training stage (checkpoints/, metrics.jsonl, tb/, supernet.pt)
    search/{bits}bit/            pareto.json, evaluated.json, pareto.png
    export/{bits}bit-{S,M,L}/    model.onnx, weights.oqpk, arch.json, MODEL_CARD.md
    report.md, results.json, *.png
Each step is skipped when its output exists, so running again resumes at the first
unfinished step (and a training stage resumes from its last checkpoint).
"""
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

import torch

from . import checkpoint, config, data
from .evaluate import load_supernet, prepare_subnet, resize
from .inherit import inherit_file
from .quant import FULL_PRECISION, check_bits
from .space import ArchField


@dataclass
class StageConfig:
    bits: int = 4  # weight and activation bits; 32 = full precision
    epochs: int = 1  # training epochs of this stage
    lr: float | None = None  # peak learning rate; None: train.lr
    init: str = "previous"  # "previous": start from the last stage (bit inheritance when bits drop); "scratch"
    reinit_steps: bool = False  # ablation: LSQ steps from data instead of inherited (doubled) ones
    elastic: list[ArchField] | None = None  # Arch fields the sandwich varies in this stage (see train.elastic); None: train.elastic

    def __post_init__(self):
        check_bits(self.bits)
        if self.init not in ("previous", "scratch"):
            raise ValueError(f"init must be 'previous' or 'scratch', got {self.init!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


@dataclass
class SearchSettings:
    budgets: list[str] = field(default_factory=list)  # e.g. ["bitops<=3e7"]; empty: the whole front
    population: int = 16  # NSGA-II population
    generations: int = 4  # offspring rounds after the first population
    val_images: int | None = 2000  # val images scoring each candidate (None: the whole val split)
    calib_images: int = 500  # BN recalibration images per candidate
    seed: int = 0  # seeds the search
    predictor: bool = False  # pre-screen candidates with the accuracy predictor
    family: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # S, M, L budgets: fractions of the largest subnet's BitOPs (the paper's OQATNets)

    def __post_init__(self):
        f = self.family
        if len(f) != 3 or not all(a < b for a, b in zip([0.0, *f], f)) or f[-1] > 1:
            raise ValueError(f"family must be 3 increasing fractions in (0, 1] (S, M, L), got {f}")


@dataclass
class ExportSettings:
    enabled: bool = True  # export the S/M/L family of each bit-width
    test_images: int = 1000  # test images for the model card's accuracy and ONNX parity


def stage_dir(run_dir: str, i: int, bits: int) -> str:
    return os.path.join(run_dir, "stages", f"{i}-{'fp' if bits == FULL_PRECISION else f'{bits}bit'}")


def _log(text: str) -> None:
    print(f"[oqat run] {text}", flush=True)


def run_stages(cfg) -> list[dict]:
    from .train import train
    done, previous = [], None
    for i, st in enumerate(cfg.stages):
        out = stage_dir(cfg.run.dir, i, st.bits)
        final = os.path.join(out, "supernet.pt")
        if not os.path.isfile(final):
            init, reinit = None, None
            if st.init == "previous" and previous is not None:
                prev_bits = checkpoint.load(previous, "oqat-supernet")["bits"]
                init = previous
                if prev_bits != FULL_PRECISION and st.bits < prev_bits:
                    init = os.path.join(out, "inherited.pt")
                    if not os.path.isfile(init):
                        inherit_file(previous, st.bits, init, st.reinit_steps)
                reinit = True if st.reinit_steps else None
            elif st.reinit_steps:
                reinit = True
            _log(f"stage {i}: {st.bits}-bit supernet, {st.epochs} epoch(s)"
                      f"{f' from {os.path.relpath(init, cfg.run.dir)}' if init else ' from scratch'}")
            train_cfg = dataclasses.replace(cfg.train, bits=st.bits, epochs=st.epochs, lr=st.lr or cfg.train.lr,
                                            init_from=init, reinit_steps=reinit,
                                            elastic=cfg.train.elastic if st.elastic is None else st.elastic)
            stage_cfg = dataclasses.replace(cfg, train=train_cfg, run=dataclasses.replace(cfg.run, dir=out))
            start = time.time()
            train(stage_cfg)
            _write_json(os.path.join(out, "stage.json"), {"wall_s": time.time() - start})
        info = _read_json(os.path.join(out, "stage.json")) or {}
        done.append({"index": i, "bits": st.bits, "epochs": st.epochs, "dir": os.path.relpath(out, cfg.run.dir),
                     "supernet": os.path.relpath(final, cfg.run.dir), "wall_s": info.get("wall_s"),
                     "metrics": _last_epoch(os.path.join(out, "metrics.jsonl"))})
        previous = final
    return done


def final_supernets(cfg, stages: list[dict]) -> dict[int, str]:
    """The last quantized supernet of each bit-width (full precision is not searched)."""
    return {s["bits"]: os.path.join(cfg.run.dir, s["supernet"]) for s in stages if s["bits"] != FULL_PRECISION}


def run_search(cfg, supernets: dict[int, str]) -> dict[int, dict]:
    """Each bit-width's search (pareto.json), with its S/M/L family named from the front."""
    from .cost import cost
    from .search import family, parse_budget, search, write_outputs
    results = {}
    budgets = [parse_budget(b) for b in cfg.search.budgets]
    for bits, path in sorted(supernets.items(), reverse=True):
        out = os.path.join(cfg.run.dir, "search", f"{bits}bit")
        pareto = os.path.join(out, "pareto.json")
        if not os.path.isfile(pareto):
            _log(f"search: {bits}-bit supernet, population {cfg.search.population}, "
                      f"{cfg.search.generations} generations")
            net, data_cfg = load_supernet(path)
            splits = data.load_splits(data_cfg or cfg.data)
            s = cfg.search
            result = search(net, data_cfg or cfg.data, splits, budgets, population=s.population,
                            generations=s.generations, seed=s.seed, calib_images=s.calib_images,
                            val_images=s.val_images, use_predictor=s.predictor,
                            log=lambda text: None if cfg.run.quiet else print(f"  {text}", flush=True))
            write_outputs(result, out)
        results[bits] = _read_json(pareto)
        space = checkpoint.space_of(checkpoint.load(path, "oqat-supernet"))
        largest = cost(space.largest(), space, bits)["bitops"]
        results[bits]["family"] = family(results[bits]["front"], largest, cfg.search.family)
    return results


def run_export(cfg, supernets: dict[int, str], searches: dict[int, dict]) -> dict[int, dict]:
    """ONNX and packed weights of each family member (S, M, L) of each bit-width, in
    export/{bits}bit-{name}; a subnet named twice (e.g. M = L) is exported once."""
    from .export import export
    from .space import Arch
    exported = {}
    for bits, path in sorted(supernets.items(), reverse=True):
        exported[bits], done = {}, {}
        for name, member in searches[bits]["family"].items():
            if member is None:
                continue
            if member["arch"] in done:
                exported[bits][name] = done[member["arch"]]
                continue
            out = os.path.join(cfg.run.dir, "export", f"{bits}bit-{name}")
            facts_file = os.path.join(out, "facts.json")
            if not os.path.isfile(facts_file):
                _log(f"export: {bits}-bit {name} {member['arch']}")
                net, data_cfg = load_supernet(path)
                data_cfg = data_cfg or cfg.data
                splits = data.load_splits(data_cfg)
                arch = Arch.parse(member["arch"], net.space)
                sub = prepare_subnet(net, arch, data_cfg, splits, cfg.search.calib_images, cfg.search.seed)
                sub = sub.to(memory_format=torch.contiguous_format)
                test = data.subset(splits.test, min(cfg.export.test_images, len(splits.test)), 0)
                xs, ys = zip(*data.eval_batches(test, data_cfg, arch.r))
                images = resize(torch.cat(xs), arch.r)
                facts = export(sub, out, (images, torch.cat(ys)), splits.mean, splits.std,
                               source=os.path.relpath(path, cfg.run.dir))
                _write_json(facts_file, {**facts, "dir": os.path.relpath(out, cfg.run.dir)})
            exported[bits][name] = done[member["arch"]] = _read_json(facts_file)
    return exported


def run_pipeline(cfg) -> dict:
    os.makedirs(cfg.run.dir, exist_ok=True)
    config.dump(cfg, os.path.join(cfg.run.dir, "config.yaml"))
    start = time.time()
    stages = run_stages(cfg)
    supernets = final_supernets(cfg, stages)
    searches = run_search(cfg, supernets) if supernets else {}
    exported = run_export(cfg, supernets, searches) if supernets and cfg.export.enabled else {}
    from .report import write_report
    results = write_report(cfg, stages, searches, exported, time.time() - start)
    _log(f"done: results in {os.path.abspath(cfg.run.dir)} (report.md, results.json)")
    return results


def _write_json(path: str, obj) -> None:
    checkpoint.atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, default=float).encode()))


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _last_epoch(path: str) -> dict | None:
    """The last per-epoch record of a stage's metrics.jsonl."""
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "epoch":
                last = rec
    return last
