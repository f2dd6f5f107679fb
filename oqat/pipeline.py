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

import torch

from . import checkpoint, config, data, distributed, faults, files
from .cost import cost
from .experiment import ExperimentConfig, check_inputs, parse_budget
from .export import export_checkpoint
from .inherit import inherit_file
from .quant import FULL_PRECISION
from .report import write_report
from .search import family, search, write_outputs
from .train import train

STAGE_OVERRIDES = ("lr", "elastic", "sandwich_random")  # StageConfig fields that, when set, replace train's


def stage_dir(run_dir: str, i: int, bits: int) -> str:
    return os.path.join(run_dir, "stages", f"{i}-{'fp' if bits == FULL_PRECISION else f'{bits}bit'}")


def _log(text: str, d: distributed.Dist = distributed.Dist()) -> None:
    if d.main:
        print(f"[oqat run] {text}", flush=True)


def stage_train_config(cfg: ExperimentConfig, i: int, init: str | None = None, reinit: bool | None = None):
    """Stage i's training settings: train's, with the stage's bits, epochs and the fields it sets;
    a stage's teacher is the supernet file of the earlier stage it names."""
    st = cfg.stages[i]
    overrides = {f: getattr(st, f) for f in STAGE_OVERRIDES if getattr(st, f) is not None}
    if st.teacher is not None:
        teacher = cfg.stages[st.teacher]
        overrides["teacher"] = os.path.join(stage_dir(cfg.run.dir, st.teacher, teacher.bits), "supernet.pt")
    return dataclasses.replace(cfg.train, bits=st.bits, epochs=st.epochs, init_from=init, reinit_steps=reinit,
                               **overrides)


def run_stages(cfg: ExperimentConfig, d: distributed.Dist = distributed.Dist()) -> list[dict]:
    """Train the stages not yet done. Under torchrun every rank trains each stage (`d`, the
    caller's group); rank 0 writes what lies between stages, the others wait for it."""
    done, previous = [], cfg.train.init_from  # the first stage starts from train.init_from, if given
    for i, st in enumerate(cfg.stages):
        out = stage_dir(cfg.run.dir, i, st.bits)
        final = os.path.join(out, "supernet.pt")
        if not os.path.isfile(final):
            init, reinit = None, None
            if st.init == "previous" and previous is not None:
                prev_bits = files.load_supernet(previous)[0].bits
                init = previous
                if prev_bits != FULL_PRECISION and st.bits < prev_bits:
                    init = os.path.join(out, "inherited.pt")
                    if d.main and not os.path.isfile(init):
                        inherit_file(previous, st.bits, init, st.reinit_steps)
                    distributed.barrier(d)
                reinit = True if st.reinit_steps else None
            elif st.reinit_steps:
                reinit = True
            _log(f"stage {i}: {st.bits}-bit supernet, {st.epochs} epoch(s)"
                 f"{f' from {os.path.relpath(init, cfg.run.dir)}' if init else ' from scratch'}"
                 f"{f', taught by stage {st.teacher}' if st.teacher is not None else ''}", d)
            stage_cfg = dataclasses.replace(cfg, train=stage_train_config(cfg, i, init, reinit),
                                            run=dataclasses.replace(cfg.run, dir=out))
            start = time.time()
            train(stage_cfg)
            if d.main:
                checkpoint.write_json(os.path.join(out, "stage.json"), {"wall_s": time.time() - start})
            distributed.barrier(d)
        record = os.path.join(out, "stage.json")
        info = checkpoint.read_json(record, "stage record") if os.path.isfile(record) else {}
        done.append({"index": i, "bits": st.bits, "epochs": st.epochs, "dir": os.path.relpath(out, cfg.run.dir),
                     "supernet": os.path.relpath(final, cfg.run.dir), "wall_s": info.get("wall_s"),
                     "metrics": _last_epoch(os.path.join(out, "metrics.jsonl"))})
        previous = final
    return done


def final_supernets(cfg: ExperimentConfig, stages: list[dict]) -> dict[int, str]:
    """The last quantized supernet of each bit-width (full precision is not searched)."""
    return {s["bits"]: os.path.join(cfg.run.dir, s["supernet"]) for s in stages if s["bits"] != FULL_PRECISION}


def run_search(cfg: ExperimentConfig, supernets: dict[int, str]) -> dict[int, dict]:
    """Each bit-width's search (pareto.json), with its S/M/L family named from the front."""
    results = {}
    budgets = [parse_budget(b) for b in cfg.search.budgets]
    for bits, path in sorted(supernets.items(), reverse=True):
        out = os.path.join(cfg.run.dir, "search", f"{bits}bit")
        pareto = os.path.join(out, "pareto.json")
        net, ckpt = files.load_supernet(path)
        if not os.path.isfile(pareto):
            _log(f"search: {bits}-bit supernet, population {cfg.search.population}, "
                      f"{cfg.search.generations} generations")
            data_cfg = ckpt["data"] or cfg.data
            s = cfg.search
            result = search(net, data_cfg, data.load_splits(data_cfg), budgets, population=s.population,
                            generations=s.generations, seed=s.seed, metric=s.metric, calib_images=s.calib_images,
                            val_images=s.val_images, use_predictor=s.predictor,
                            log=lambda text: None if cfg.run.quiet else print(f"  {text}", flush=True))
            write_outputs(result, out)
        results[bits] = checkpoint.read_json(pareto, "search result")
        largest = cost(net.space.largest(), net.space, bits)["bitops"]
        results[bits]["family"] = family(results[bits]["front"], largest, cfg.search.family)
    return results


def run_export(cfg: ExperimentConfig, supernets: dict[int, str], searches: dict[int, dict]) -> dict[int, dict]:
    """ONNX and packed weights of each family member (S, M, L) of each bit-width, in
    export/{bits}bit-{name}; a subnet named twice (e.g. M = L) is exported once."""
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
                faults.pause_point("export")
                facts = export_checkpoint(path, member["arch"], out, cfg.search.calib_images, cfg.export.test_images,
                                          seed=cfg.search.seed, source=os.path.relpath(path, cfg.run.dir),
                                          speed_rounds=cfg.export.speed_rounds)
                checkpoint.write_json(facts_file, {**facts, "dir": os.path.relpath(out, cfg.run.dir)})
            exported[bits][name] = done[member["arch"]] = checkpoint.read_json(facts_file, "export facts")
    return exported


def check_run(cfg: ExperimentConfig) -> None:
    """What a run needs from outside (data, start files) and budgets it can search (no latency
    table in a run), checked before any work: the config itself was checked as it loaded."""
    check_inputs(cfg)
    for budget in cfg.search.budgets + ([f"{cfg.search.metric}<=1"] if cfg.search.metric else []):
        parse_budget(budget)


def run_pipeline(cfg: ExperimentConfig) -> dict:
    check_run(cfg)
    start = time.time()
    with distributed.group() as d:  # under torchrun: every rank trains, rank 0 does the rest
        if d.main:
            os.makedirs(cfg.run.dir, exist_ok=True)
            config.dump(cfg, os.path.join(cfg.run.dir, "config.yaml"))
        distributed.barrier(d)
        stages = run_stages(cfg, d)
    if not d.main:
        return {}
    if d.world > 1:  # the other ranks have finished: their cores serve the search
        torch.set_num_threads(torch.get_num_threads() * d.world)
    supernets = final_supernets(cfg, stages)
    searches = run_search(cfg, supernets) if supernets else {}
    exported = run_export(cfg, supernets, searches) if supernets and cfg.export.enabled else {}
    results = write_report(cfg, stages, searches, exported, time.time() - start)
    _log(f"done: results in {os.path.abspath(cfg.run.dir)} (report.md, results.json)")
    return results


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
