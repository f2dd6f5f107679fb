"""`oqat run`: the whole pipeline a config describes, resumable stage by stage.

    stages (e.g. 4-bit supernet, inherit to 3 bits and train, inherit to 2 bits and train,
    optionally a mixed-precision stage that starts from the whole chain)
    -> a latency model of the space in oqat's runtime, where search.latency_model asks for one
    -> search of each precision's final supernet (its S/M/L family named from the front)
    -> the recommended family, from every front together
    -> export of the families -> report

The run folder is laid out as `layout.RunLayout` says. Each step is skipped when its output
exists, so running again resumes at the first unfinished step (and a training stage resumes
from its last checkpoint).
"""
import dataclasses
import os
import time

import torch

from ..config.settings import ExperimentConfig, check_inputs, check_run_fields, stage_train_config
from ..core import distributed, faults, typed
from ..data.splits import load_splits
from ..deploy.export import export_checkpoint
from ..files import checkpoints, records
from ..files.layout import BEST, RunLayout
from ..nets.budget import LATENCY
from ..nets.cost import arch_metrics
from ..quant.precision import Precision
from ..runtime import latency_model
from ..runtime.latency_model import LatencyModel
from ..search import search
from ..search.front import family, recommended, write_outputs
from ..space.arch import Arch
from ..space.builtin import get_space
from ..train.inherit import inherit_file, mixed_file
from ..train.trainer import train
from .report import write_report


def _log(text: str, d: distributed.Dist = distributed.Dist()) -> None:
    if d.main:
        print(f"[oqat run] {text}", flush=True)


def run_stages(cfg: ExperimentConfig, d: distributed.Dist = distributed.Dist()) -> list[dict]:
    """Train the stages not yet done. Under torchrun every rank trains each stage (`d`, the
    caller's group); rank 0 writes what lies between stages, the others wait for it."""
    run, done = RunLayout(cfg.run.dir), []
    for i, st in enumerate(cfg.stages):
        stage = run.stage(i, st.bits)
        if not os.path.isfile(stage.supernet):
            t = stage_train_config(cfg, i)
            if t.init_from is not None:
                if Precision.of(st.bits).mixed:  # each width's steps from the last stage that trained it
                    if d.main and not os.path.isfile(stage.inherited):
                        chain = {s["bits"]: os.path.join(cfg.run.dir, s["supernet"]) for s in done}
                        mixed_file(t.init_from, st.bits, chain, stage.inherited)
                    distributed.barrier(d)
                    t = dataclasses.replace(t, init_from=stage.inherited)
                elif not (start := Precision.of(checkpoints.load_supernet(t.init_from)[0].bits)).full \
                        and st.bits < start.bits:  # bit inheritance
                    if d.main and not os.path.isfile(stage.inherited):
                        inherit_file(t.init_from, st.bits, stage.inherited, st.reinit_steps)
                    distributed.barrier(d)
                    t = dataclasses.replace(t, init_from=stage.inherited)
            _log(f"stage {i}: {Precision.of(st.bits).label} supernet, {st.epochs} epoch(s)"
                 f"{f' from {run.relative(t.init_from)}' if t.init_from else ' from scratch'}"
                 f"{f', taught by stage {st.teacher}' if st.teacher is not None else ''}", d)
            stage_cfg = dataclasses.replace(cfg, train=t, run=dataclasses.replace(cfg.run, dir=stage.root))
            start = time.time()
            train(stage_cfg)
            if d.main:
                records.write_stage(stage.timing, time.time() - start)
            distributed.barrier(d)
        done.append({"index": i, "bits": st.bits, "epochs": st.epochs, "dir": run.relative(stage.root),
                     "supernet": run.relative(stage.supernet), "wall_s": records.read_stage(stage.timing),
                     "metrics": records.last_epoch(stage.metrics)})
    return done


def final_supernets(cfg: ExperimentConfig, stages: list[dict]) -> dict[int | str, str]:
    """The last quantized supernet of each precision (full precision is not searched), by `Precision.key`."""
    return {Precision.of(s["bits"]).key: os.path.join(cfg.run.dir, s["supernet"])
            for s in stages if not Precision.of(s["bits"]).full}


def run_latency_model(cfg: ExperimentConfig, supernets: dict[int | str, str]) -> LatencyModel | None:
    """search.latency_model's model: its file, or with "build" one measured here for every
    searched width (`RunLayout.latency_model`; a stopped build resumes)."""
    name = cfg.search.latency_model
    if name is None:
        return None
    space = checkpoints.load_supernet(next(iter(supernets.values())))[0].space.with_bits(())
    if name != "build":
        return latency_model.load(name, space)
    path = RunLayout(cfg.run.dir).latency_model
    if not os.path.isfile(path):
        widths = tuple(sorted({w for key in supernets for w in Precision.of(key).widths}))
        _log(f"latency model: each part of space '{space.name}' at {', '.join(map(str, widths))} bits in oqat's "
             "runtime, 1 thread, batch 1")
        model = latency_model.build(space, widths, partial=path + ".partial")
        model.save(path)
        os.remove(path + ".partial")
    return latency_model.load(path, space)


def run_search(cfg: ExperimentConfig, supernets: dict[int | str, str],
               latency: LatencyModel | None = None) -> dict[int | str, dict]:
    """Each precision's search (pareto.json), with its S/M/L family named from the front; with
    `latency`, every point priced in ms too."""
    results = {}
    for key, path in sorted(supernets.items(), key=lambda kv: Precision.of(kv[0]).order):
        out = RunLayout(cfg.run.dir).search(key)
        net, ckpt = checkpoints.load_supernet(path)
        if not os.path.isfile(out.pareto):
            _log(f"search: {Precision.of(net.bits).label} supernet, population {cfg.search.population}, "
                 f"{cfg.search.generations} generations")
            data_cfg = ckpt["data"] or cfg.data
            result = search(net, data_cfg, load_splits(data_cfg), cfg.search, latency,
                            log=lambda text: None if cfg.run.quiet else print(f"  {text}", flush=True))
            write_outputs(result, out.root)
        results[key] = records.read_pareto(out.pareto)
        if net.space.bit_widths:
            for p in results[key]["front"]:
                p["stage_bits"] = net.space.stage_bits(Arch.parse(p["arch"], net.space))
        largest = arch_metrics(net.space.largest(), net.space, net.bits)
        if latency:
            largest[LATENCY] = latency.predict(net.space.largest(), None if net.space.bit_widths else net.bits)
        results[key].update({f"largest_{m}": largest[m] for m in ("bitops", "macs", LATENCY) if m in largest})
        results[key]["family"] = family(results[key]["front"], largest, cfg.search.family, cfg.search.family_by)
    return results


def recommended_family(cfg: ExperimentConfig, searches: dict[int | str, dict]) -> dict[str, dict | None]:
    """The S/M/L family from every front together, uniform and mixed (`search.recommended`): three
    distinct networks of any precision, which each one's "bits" names."""
    points = [{**p, "bits": key} for key, s in searches.items() for p in s["front"]]
    metrics = ("bitops", "macs") + ((LATENCY,) if cfg.search.family_by == LATENCY else ())
    largest = {m: max(s[f"largest_{m}"] for s in searches.values()) for m in metrics}
    return recommended(points, largest, cfg.search.family, cfg.search.family_by)


def run_export(cfg: ExperimentConfig, supernets: dict[int | str, str], searches: dict[int | str, dict],
               recommended: dict[str, dict | None] | None = None,
               latency: LatencyModel | None = None) -> dict[int | str, dict]:
    """ONNX and packed weights of each family member (S, M, L) of each precision, in
    `RunLayout.export(p, name)`, then of the recommended family (`RunLayout.export(BEST, name)`);
    a subnet named twice (e.g. M = L, or a recommended member) is exported once."""
    run, exported, done = RunLayout(cfg.run.dir), {}, {}
    groups = [(key, s["family"]) for key, s in sorted(searches.items(), key=lambda kv: Precision.of(kv[0]).order)]
    for group, members in groups + ([(BEST, recommended)] if recommended else []):
        exported[group] = {}
        for name, member in members.items():
            if member is None:
                continue
            key = member.get("bits", group)  # a recommended member names its precision
            if (key, member["arch"]) in done:
                exported[group][name] = done[key, member["arch"]]
                continue
            out = run.export(group, name)
            if not os.path.isfile(out.facts):
                _log(f"export: {'best ' if group == BEST else ''}{Precision.of(key).label} {name} {member['arch']}")
                faults.pause_point("export")
                path = supernets[key]
                facts = export_checkpoint(path, member["arch"], out.root, cfg.search.calib_images,
                                          cfg.export.test_images, seed=cfg.search.seed, source=run.relative(path),
                                          speed_rounds=cfg.export.speed_rounds, latency=latency)
                records.write_facts(out.facts, facts, run.relative(out.root))
            exported[group][name] = done[key, member["arch"]] = records.read_facts(out.facts)
    return exported


def check_run(cfg: ExperimentConfig) -> None:
    """No train field it would not read, what a run needs from outside (data, start files, a
    latency model measured here) and budgets it can search (latency with a latency model), checked
    before any work: the config itself was checked as it loaded."""
    check_run_fields(cfg)
    check_inputs(cfg)
    cfg.search.check_metrics(latency=False)
    if cfg.search.latency_model not in (None, "build"):
        latency_model.load(cfg.search.latency_model, get_space(cfg.model.space))


def run_pipeline(cfg: ExperimentConfig) -> dict:
    check_run(cfg)
    start = time.time()
    with distributed.group() as d:  # under torchrun: every rank trains, rank 0 does the rest
        if d.main:
            os.makedirs(cfg.run.dir, exist_ok=True)
            typed.dump(cfg, RunLayout(cfg.run.dir).config)
        distributed.barrier(d)
        stages = run_stages(cfg, d)
    if not d.main:
        return {}
    if d.world > 1:  # the other ranks have finished: their cores serve the search
        torch.set_num_threads(torch.get_num_threads() * d.world)
    supernets = final_supernets(cfg, stages)
    latency = run_latency_model(cfg, supernets) if supernets else None
    searches = run_search(cfg, supernets, latency) if supernets else {}
    recommended = recommended_family(cfg, searches) if len(searches) > 1 else None
    exported = run_export(cfg, supernets, searches, recommended, latency) if supernets and cfg.export.enabled else {}
    results = write_report(cfg, stages, searches, exported, time.time() - start, recommended)
    run = RunLayout(cfg.run.dir)
    _log(f"done: results in {os.path.abspath(run.root)} ({run.relative(run.report)}, {run.relative(run.results)})")
    return results

