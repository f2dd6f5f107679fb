"""The `oqat` command line: one sub-command per stage of the pipeline.

A sub-command's settings are fields of the experiment config (`oqat.experiment`): the
option --population is search.population, with that field's default and comment, so each
setting has one default whether it comes from `oqat run`'s YAML or from a sub-command.

User mistakes (bad config field, missing file, bad architecture) raise ValueError
subclasses and end as one line on stderr with exit status 2; OQAT_DEBUG=1 shows the
traceback instead.
"""
import argparse
import contextlib
import functools
import json
import os
import sys

MIN_HELD_OUT = 10  # held-out pairs below which a predictor's Kendall tau and RMSE are noise
NETWORK_HELP = "a supernet file (with --arch), a subnet or packed file, or an export folder (files.load_model)"


def _bits(text: str) -> int:
    """One width for every layer (4, 4bit, fp; 32 = full precision)."""
    from .precision import Precision
    try:
        p = Precision.parse(text)
    except ValueError:
        p = None
    if p is None or p.mixed:
        raise argparse.ArgumentTypeError(f"bits must be 1..8 or 32 (fp), got {text!r}") from None
    return p.bits


def _label(bits) -> str:
    from .precision import Precision
    return Precision.of(bits).label


@functools.cache
def _defaults():
    from .experiment import ExperimentConfig
    return ExperimentConfig()


def add_settings(p, *keys: str, of_run: bool = False) -> None:
    """An option per config field, e.g. "search.population" -> --population, documented by
    the field's comment and default (`of_run`: a command on a run's file takes that run's
    config first); `settings(args)` reads them back as a checked config."""
    from .config import field_comments
    for key in keys:
        section, name = key.split(".")
        part = getattr(_defaults(), section)
        value = getattr(part, name)
        note = field_comments(type(part)).get(name, "").replace("%", "%%")
        flag = "--" + name.replace("_", "-").removesuffix("s" if isinstance(value, list) else "")
        if isinstance(value, bool):
            p.add_argument(flag, dest=key, action="store_const", const=True, default=None,
                           help=f"{note} (config {key})")
        elif isinstance(value, list):
            p.add_argument(flag, dest=key, action="append", default=None, metavar=flag[2:].upper(),
                           help=f"repeatable; {note} (config {key})")
        else:
            default = f"default: the run's that wrote the file, else {value}" if of_run else f"default {value}"
            p.add_argument(flag, dest=key, default=None, metavar=name.upper(), help=f"{note} (config {key}; {default})")
    p.set_defaults(settings=(*(p.get_default("settings") or ()), *keys))


def settings(args, base=None):
    """`base` (an experiment config; default: the defaults) with the options of `add_settings`
    applied (and checked)."""
    from .config import apply_overrides
    given = [(k, getattr(args, k)) for k in args.settings if getattr(args, k) is not None]
    return apply_overrides(base or _defaults(), [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) else v}"
                                         for k, v in given])


def add_output(p, flag: str, folder: bool, **kwargs) -> None:
    """An output path option; `main` refuses a path that cannot take it before the command runs."""
    p.add_argument(flag, **kwargs)
    p.set_defaults(outputs={**(p.get_default("outputs") or {}), flag.lstrip("-").replace("-", "_"): (flag, folder)})


def check_outputs(args) -> None:
    from .faults import check_output
    for dest, (flag, folder) in (getattr(args, "outputs", None) or {}).items():
        if getattr(args, dest) is not None:
            check_output(str(getattr(args, dest)), flag, folder)


def print_table(rows: dict, title: str | None = None) -> None:
    if title:
        print(title)
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        text = f"{value:,.0f}" if isinstance(value, float) and value >= 1000 else (
            f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value))
        print(f"  {key:<{width}}  {text:>16}")


# --- cost -----------------------------------------------------------------------------
def add_cost(sub):
    p = sub.add_parser("cost", help="MACs, params, BitOPs, FLOPs_q and size of an architecture")
    p.add_argument("--space", default=None, help="search space (default: the architecture's)")
    p.add_argument("--arch", required=True, help="JSON file, JSON string or compact string")
    p.add_argument("--bits", type=_bits, default=None,
                   help="weight and activation bits (32 = full precision; default: the bits an export's arch.json "
                        "records, else 4)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args):
    from .cost import arch_metrics
    from .space import Arch, arch_bits, get_space
    space = get_space(args.space) if args.space else None
    arch = Arch.parse(args.arch, space)
    if args.bits is None:
        args.bits = arch_bits(args.arch) or 4
    result = arch_metrics(arch, space, args.bits)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(_readable(result), f"{arch}  ({'bits per block' if arch.b else _label(args.bits)})")


# --- convert-oqa ----------------------------------------------------------------------
def add_convert_oqa(sub):
    p = sub.add_parser("convert-oqa", help="convert one of the authors' checkpoints to oqat's format")
    p.add_argument("checkpoint")
    p.add_argument("--bits", type=_bits, required=True, help="the checkpoint's bit-width (b4, b3, b2 in its name)")
    add_output(p, "--out", False, required=True, help="the oqat supernet file to write")
    p.set_defaults(func=cmd_convert_oqa)


def cmd_convert_oqa(args):
    from .files import load_oqa_checkpoint, save_supernet
    net = load_oqa_checkpoint(args.checkpoint, args.bits)
    save_supernet(net, args.out, {"source": os.path.basename(args.checkpoint)})
    print(f"wrote {args.out} (mbv3 supernet, {_label(args.bits)})")


# --- inherit --------------------------------------------------------------------------
def add_inherit(sub):
    p = sub.add_parser("inherit", help="bit inheritance: a b-bit supernet to B < b bits (steps x 2^(b-B))")
    p.add_argument("checkpoint", help="a supernet file (supernet.pt of a run)")
    p.add_argument("--bits", type=_bits, required=True, help="target bits, lower than the source's")
    add_output(p, "--out", False, required=True, help="the inherited supernet file to write")
    p.add_argument("--reinit-steps", action="store_true",
                   help="ablation: mark the steps for LSQ re-initialisation from data instead of doubling")
    p.set_defaults(func=cmd_inherit)


def cmd_inherit(args):
    from .inherit import inherit_file
    net = inherit_file(args.checkpoint, args.bits, args.out, args.reinit_steps)
    print(f"wrote {args.out} ({net.space.name} supernet, {_label(net.bits)})")


# --- analyze --------------------------------------------------------------------------
def add_analyze(sub):
    p = sub.add_parser("analyze", help="which architectural traits make a subnet quantization-friendly")
    p.add_argument("run_dir", help="a run folder of `oqat run` (its stages/ hold the supernets)")
    add_settings(p, *(f"analysis.{name}" for name in
                      ("samples", "seed", "calib_images", "val_images", "bootstrap", "bands")), of_run=True)
    add_output(p, "--out", True, default=None, help="output folder (default RUN_DIR/analysis)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args):
    from .analysis import analyze, format_corr
    from .config import load
    from .experiment import ExperimentConfig
    from .layout import AnalysisLayout, RunLayout
    run = RunLayout(args.run_dir)
    cfg = settings(args, load(ExperimentConfig, run.config) if os.path.isfile(run.config) else None).analysis
    result = analyze(args.run_dir, cfg, args.out,
                     progress=lambda i, n: print(f"\r  evaluated {i}/{n} architectures", end="", file=sys.stderr))
    print(file=sys.stderr)
    out = AnalysisLayout(args.out) if args.out else run.analysis
    s = result["summary"]
    print(f"{len(result['rows'])} subnets, val top-1 on {s['val_images']:,} val images; loss against "
          f"{s['reference_text']}; per trait Spearman rho [bootstrap 95% CI], p")
    for b in s["bits"]:
        print(f"  {_label(b)}: mean loss {s['mean_loss'][b]:.2f} points")
        for t, c in s["correlations"][b].items():
            print(f"    vs {t:<12} rho {format_corr(c)}")
    print(f"wrote {out.markdown}, {out.json} and plots")


# --- train ----------------------------------------------------------------------------
def add_train(sub):
    p = sub.add_parser("train", help="train the supernet for one stage at train.bits (resumes in run.dir)")
    p.add_argument("config", nargs="?", default=None, help="YAML experiment config (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.05")
    add_settings(p, "run.quiet")
    p.set_defaults(func=cmd_train)


@contextlib.contextmanager
def _training(args, check):
    """The start of a command that trains (`oqat train`, `oqat run`): its config, loaded and
    checked before the heavy imports (fast errors), `check(cfg)` of what it needs from outside
    before the run folder exists (a bad input leaves none: the lock makes it), the CPU
    allocator setting, and the run folder's lock held while it runs."""
    cfg = settings(args, _load_experiment(args))  # CONFIG KEY=VALUE..., then --quiet
    from .faults import run_dir_lock
    from .train import keep_freed_memory_on_cpu
    check(cfg)
    keep_freed_memory_on_cpu()
    with run_dir_lock(cfg.run.dir):
        yield cfg


def cmd_train(args):
    from .experiment import check_inputs
    from .layout import TrainingLayout
    from .train import train
    with _training(args, check_inputs) as cfg:
        final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {TrainingLayout(cfg.run.dir).supernet}  " + json.dumps(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}))


# --- export ---------------------------------------------------------------------------
def add_export(sub):
    p = sub.add_parser("export", help="integer ONNX graph, QONNX, packed weights, arch.json, facts.json and a "
                                      "model card with speed")
    p.add_argument("checkpoint", help=NETWORK_HELP)
    p.add_argument("--arch", default=None, help="JSON file, JSON string or compact string (needed for a supernet)")
    add_output(p, "--out", True, required=True, help="output folder")
    add_settings(p, "search.calib_images", "search.seed", "export.test_images", "export.speed_rounds", of_run=True)
    _add_data_options(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    from .config import apply_overrides
    from .data import DataConfig
    from .export import export_checkpoint
    from .files import load_model, subnet_arch
    from .layout import ExportLayout
    from .records import write_facts
    from .supernet import Supernet
    path = args.checkpoint
    net, ckpt = load_model(path)
    cfg = _run_settings(args, ckpt)
    overrides = _data_overrides(args)
    if isinstance(net, Supernet):
        _warn_untrained(net, subnet_arch(net, args.arch, path))
    data_cfg = apply_overrides(ckpt["data"] or DataConfig(), overrides) if ckpt["data"] or overrides else None
    if data_cfg is None:
        print(f"note: '{path}' records no data, so the export carries no preprocessing or class names and "
              "measures no accuracy; give --dataset to add them", file=sys.stderr)
    facts = export_checkpoint(path, args.arch, args.out, cfg.search.calib_images, cfg.export.test_images,
                              data_cfg, cfg.search.seed, source=path, speed_rounds=cfg.export.speed_rounds)
    write_facts(ExportLayout(args.out).facts, facts, args.out)
    print(f"wrote {args.out}: " + export_summary(facts))


def export_summary(facts: dict) -> str:
    """One line of an export's facts: sizes, test top-1 per runtime, speed against fp32."""
    from .export import speedup
    s, test, speed = facts["sizes"], facts.get("test"), facts.get("speed")
    line = (f"{facts['arch']} at {_label(facts['bits'])}; onnx {s['onnx'] / 1024:,.1f} KiB, "
            f"packed {s['packed'] / 1024:,.1f} "
            f"KiB (fp32 {s['fp32'] / 1024:,.1f} KiB)")
    if test:
        line += f"; test top-1 on {test['n']:,} test images: PyTorch {test['torch_top1']:.2f}%" + "".join(
            f", {r} {v['top1']:.2f}% (agreement {v['top1_agreement']:.2f}%)" for r, v in test["runtimes"].items())
    if speed:
        line += f"; speed-up over the fastest fp32 (below 1: slower), {speed['threads']} thread(s): " + ", ".join(
            f"{speedup(ms):.2f}x at batch {b}" for b, ms in speed["batches"].items())
    return line


# --- latency --------------------------------------------------------------------------
def add_latency(sub):
    p = sub.add_parser("latency", help="median latency of the deployed graph and its fp32 self in each runtime, "
                                       "and of PyTorch, on this machine")
    p.add_argument("source", help=NETWORK_HELP)
    p.add_argument("--arch", default=None, help="JSON file, JSON string or compact string")
    p.add_argument("--batch", type=int, action="append", default=None,
                   help="batch size, repeatable; batch 1 is always measured")
    p.add_argument("--runs", type=int, default=50, help="timed runs; the median is reported (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--threads", type=int, default=1, help="threads for every engine (default 1)")
    add_output(p, "--table", False, default=None,
                   help="JSON latency table to add the deployed graph's batch-1 ms to (created if missing); it records "
                        "bits, device and threads, and refuses a measurement of other ones")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_latency)


def cmd_latency(args):
    from .latency import deployed_engine, load_for_latency, measure_latency
    from .machine import cpu_model
    from .records import update_latency_table
    batches = sorted({1, *(args.batch or [])})
    if batches[0] < 1 or args.threads < 1:
        raise ValueError(f"--batch and --threads must be >= 1, got batches {batches}, threads {args.threads}")
    net, folder = load_for_latency(args.source, args.arch)
    result = measure_latency(net, batches, args.runs, args.warmup, args.threads, folder)
    arch = net.arch.to_str()
    if args.table:
        update_latency_table(args.table, arch, result[deployed_engine(result)][1], net.bits, cpu_model(), args.threads,
                             net.space)
    if args.json:
        print(json.dumps({"arch": arch, "bits": net.bits, "device": cpu_model(), "threads": args.threads,
                          "ms": result}))
    else:
        rows = {f"{engine} batch {b} (ms)": ms for engine, by_batch in result.items() for b, ms in by_batch.items()}
        print_table(rows, f"{arch} ({_label(net.bits)}) on {cpu_model()}, {args.threads} thread(s)")
    if args.table:
        print(f"updated {args.table}", file=sys.stderr)


# --- predict --------------------------------------------------------------------------
def add_predict(sub):
    p = sub.add_parser("predict", help="the top classes of image files by an exported network, in the fastest runtime "
                                       "here")
    p.add_argument("export", help="an export folder (oqat export / oqat run's export/...)")
    p.add_argument("images", nargs="+", help="PNG/JPEG files, or folders of them")
    p.add_argument("--top", type=int, default=5, help="classes to print per image (default 5)")
    p.add_argument("--runtime", default=None, help="oqat, openvino or onnxruntime (default: the fastest here)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: the runtime's)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args):
    from .deploy import Runner
    from .preprocess import image_files
    if not os.path.isdir(args.export):
        raise ValueError(f"export '{args.export}' must be an export folder (it holds model.onnx and facts.json)")
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    files = image_files(args.images)
    runner = Runner(args.export, args.runtime, args.threads)
    for i in range(0, len(files), 64):
        chunk = files[i:i + 64]
        for path, top in zip(chunk, runner.classify(chunk, args.top)):
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in top))
    print(f"{len(files)} image(s), {runner.runtime} runtime", file=sys.stderr)


# --- eval / search / sample -------------------------------------------------------------
def _add_data_options(p):
    p.add_argument("--dataset", default=None, help="data.name (default: the file's run's data)")
    p.add_argument("--data-root", default=None, help="data.root (default: the file's run's data)")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="DataConfig override, repeatable, e.g. --data val_size=5000")


def _data_overrides(args) -> list[str]:
    return [*([f"name={args.dataset}"] if args.dataset else []),
            *([f"root={args.data_root}"] if args.data_root else []), *args.data]


def _add_supernet_options(p, what: str = "a supernet file (supernet.pt of a run)"):
    p.add_argument("checkpoint", help=what + "; settings not given default to its run's config")
    add_settings(p, "search.calib_images", "search.seed", of_run=True)
    _add_data_options(p)
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, "
                                                   "else cpu)")


def _run_settings(args, ckpt: dict):
    """The options given over the config of the run that wrote the file (its calibration images,
    seed, search settings), so that a run's numbers come out again; else over the defaults."""
    from .config import from_dict
    from .experiment import ExperimentConfig
    try:
        run = from_dict(ExperimentConfig, ckpt["config"], "config") if isinstance(ckpt.get("config"), dict) else None
    except ValueError as err:
        print(f"note: the run config in '{args.checkpoint}' does not load ({err}); using the defaults",
              file=sys.stderr)
        run = None
    return settings(args, run)


def _open(args, *formats):
    """(network, settings, data config, splits) of the file args.checkpoint."""
    from .files import open_model
    device = _device(args.device)
    net, ckpt, data_cfg, splits = open_model(args.checkpoint, _data_overrides(args), device, *formats)
    return net, _run_settings(args, ckpt), data_cfg, splits


def _device(name: str | None) -> str:
    """The torch device --device names, refused in one line where it is not one or this machine lacks it."""
    import torch
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device '{name}' is not a torch device; expected cpu, cuda, cuda:N or mps") from None
    count = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "mps": int(torch.backends.mps.is_available())}.get(device.type, 0)
    if (device.index or 0) >= count:
        raise ValueError(f"--device '{name}': this machine has no such device; expected cpu"
                         + (f" or cuda:0..{count - 1}" if device.type == "cuda" and count else ""))
    return name


def _warn_untrained(net, arch) -> None:
    import warnings

    from .supernet import UntrainedWarning
    for choice in net.untrained(arch):
        print(f"warning: the architecture runs {choice}, which this supernet never trained: "
              "its accuracy says little of the supernet", file=sys.stderr)
    warnings.simplefilter("ignore", UntrainedWarning)  # said above, before the work, in one line each


def _readable(costs: dict) -> dict:
    """Costs as printed: size in KiB, the unit of the report and of the export's sizes."""
    return {("size (KiB)" if k == "size_bits" else k): (v / 8192 if k == "size_bits" else v) for k, v in costs.items()}


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1/top-5 and costs of one subnet: of a supernet (BN recalibrated) "
                                    "or a subnet file")
    _add_supernet_options(p, NETWORK_HELP)
    p.add_argument("--arch", default=None, help="JSON file, JSON string or compact string (needed for a supernet)")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="held-out val (search) or test (reports) (default val)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args):
    from .cost import arch_metrics
    from .data import eval_batches
    from .evaluate import evaluate, prepare_subnet
    from .files import PACKED, SUBNET, SUPERNET, subnet_arch
    from .supernet import Supernet
    net, cfg, data_cfg, splits = _open(args, SUPERNET, SUBNET, PACKED)
    s = cfg.search
    arch = subnet_arch(net, args.arch, args.checkpoint)
    if isinstance(net, Supernet):
        _warn_untrained(net, arch)
        sub = prepare_subnet(net, arch, data_cfg, splits, s.calib_images, s.seed)
        bn = f"BN recalibrated on {min(s.calib_images, len(splits.train)):,} training images, seed {s.seed}"
    else:
        sub, bn = net, "BN as saved in the file"
    arch = sub.arch
    result = evaluate(sub, eval_batches(getattr(splits, args.split), data_cfg, arch.r))
    result = {"arch": arch.to_str(), "bits": sub.bits, "split": args.split, **result,
              **arch_metrics(arch, net.space, sub.bits), "calibration": bn}
    if args.json:
        print(json.dumps(result))
    else:
        print_table(_readable({k: v for k, v in result.items() if k not in ("arch", "bits", "split", "calibration")}),
                    f"{arch}  ({_label(sub.bits)}; {data_cfg.name} {args.split}, {result['n']:,} images; {bn})")


def add_search(sub):
    p = sub.add_parser("search", help="NSGA-II Pareto search of val top-1 against cost under budgets")
    _add_supernet_options(p)
    add_settings(p, *(f"search.{name}" for name in
                      ("budgets", "metric", "population", "generations", "val_images", "predictor")), of_run=True)
    p.add_argument("--latency-table", default=None,
                   help="latency table of `oqat latency --table` (same bits as CHECKPOINT) enabling the latency metric")
    p.add_argument("--pairs", default=None, help="(arch, val_top1) JSON (oqat sample) to start the predictor from")
    add_output(p, "--out", True, default="search",
               help="output folder for pareto.json, evaluated.json, pareto.png (default search)")
    p.set_defaults(func=cmd_search)


def cmd_search(args):
    from .budget import LATENCY
    from .layout import SearchLayout
    from .records import load_latency_table, load_pairs
    from .search import search, write_outputs
    latency = args.latency_table is not None
    settings(args).search.check_metrics(latency)  # the options given: their mistakes stop before the data loads
    net, cfg, data_cfg, splits = _open(args)
    s = cfg.search
    s.check_metrics(latency)
    table = load_latency_table(args.latency_table, net.space, net.bits) if latency else None
    if table:
        print(f"  latency table: {len(table['ms'])} subnets at {_label(table['bits'])} on {table['device']}, "
              f"{table['threads']} thread(s)", file=sys.stderr)
    pairs = load_pairs(args.pairs, net.space) if args.pairs else None
    result = search(net, data_cfg, splits, s, table and table["ms"], pairs,
                    log=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    write_outputs(result, args.out)
    m, n_val = result.metric, min(s.val_images or len(splits.val), len(splits.val))
    print(f"  front ({m}): val top-1 on {n_val:,} val images, test top-1 on {len(splits.test):,} test images")
    for p in result.front:
        value = f"{p[m]:>9.2f} ms" if m == LATENCY else f"{p[m]:>14,.0f}"
        print(f"  {p['arch']:<48} {value}  val {p['val_top1']:6.2f}%  test {p['test_top1']:6.2f}%")
    print(f"wrote {SearchLayout(args.out).pareto} ({len(result.front)} on the front, {result.evaluations} evaluated"
          f"{f', {result.predicted} predicted only' if result.settings['predictor'] else ''}, {result.seconds:.0f} s)")


def add_sample(sub):
    p = sub.add_parser("sample", help="(arch, val top-1) pairs of random subnets, and a predictor's quality on them")
    _add_supernet_options(p)
    p.add_argument("--n", type=int, required=True, help="distinct random architectures to evaluate")
    add_settings(p, "search.val_images", of_run=True)
    add_output(p, "--out", False, required=True, help="pairs JSON file")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args):
    from .predictor import fit_and_score
    from .records import save_pairs
    from .search import Scorer, sample_points
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    net, cfg, data_cfg, splits = _open(args)
    s = cfg.search
    scorer = Scorer(net, data_cfg, splits, s.calib_images, s.val_images, s.seed)
    points = sample_points(scorer, args.n, s.seed)
    save_pairs(args.out, points)
    print(f"wrote {args.out} ({len(points)} pairs; val top-1 on {len(scorer.val):,} val images)")
    if len(points) >= 4:
        from .space import Arch
        pairs = [(Arch.parse(p["arch"], net.space), p["val_top1"]) for p in points]
        _, q = fit_and_score(pairs, net.space, seed=s.seed)
        few = (f" (only {q['n']} held-out pairs: too few to judge the predictor; sample 40 or more)"
               if q["n"] < MIN_HELD_OUT else "")
        print(f"  predictor on {q['n']} held-out pairs: Kendall tau {q['kendall_tau']:.3f}, "
              f"RMSE {q['rmse']:.2f} points{few}")


# --- config -----------------------------------------------------------------------------
def add_config(sub):
    p = sub.add_parser("config", help="show a config (default: the defaults) with a comment per field, or check it")
    p.add_argument("action", nargs="?", default="show", choices=["show", "check"],
                   help="show (default): the resolved config; check: what `oqat run` checks before it starts "
                        "(its data is there, run.dir can be written, ...)")
    p.add_argument("config", nargs="?", default=None, help="YAML experiment config (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. search.population=8")
    p.set_defaults(func=cmd_config)


def cmd_config(args):
    from .config import describe
    from .faults import check_output
    from .pipeline import check_run
    cfg = _load_experiment(args)
    if args.action == "check":
        check_run(cfg)
        check_output(cfg.run.dir, "run.dir", folder=True)  # what the run folder's lock refuses
        print(f"ok: {args.config or 'the defaults'} is a valid config for `oqat run`, its data is there and "
              f"run.dir '{cfg.run.dir}' can be written")
    else:
        print(describe(cfg), end="")


def _load_experiment(args):
    """The experiment config of a sub-command's CONFIG and KEY=VALUE arguments, checked as it loads."""
    from .config import load
    from .experiment import ExperimentConfig
    # A first positional with '=' is an override, not a config file.
    if args.config is not None and "=" in args.config:
        args.overrides, args.config = [args.config, *args.overrides], None
    return load(ExperimentConfig, args.config, args.overrides)


# --- run ------------------------------------------------------------------------------
def add_run(sub):
    p = sub.add_parser("run", help="the whole pipeline a config describes: stages, search, export, report")
    p.add_argument("config", help="YAML config (see `oqat config show`)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. run.dir=runs/x")
    add_settings(p, "run.quiet")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    from .pipeline import check_run, run_pipeline
    with _training(args, check_run) as cfg:
        run_pipeline(cfg)


PARSERS = [add_run, add_cost, add_convert_oqa, add_inherit, add_analyze, add_train, add_config, add_export,
           add_latency, add_predict, add_eval, add_search, add_sample]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oqat", description="Once Quantization-Aware Training")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    for p in sub.choices.values():
        p.set_defaults(usage_error=p.error)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .faults import Stopped, stop_on_signals
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # reported with the sub-command's usage, not the top level's
        args.usage_error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        check_outputs(args)
        with stop_on_signals():
            return args.func(args) or 0
    except (ValueError, OSError, Stopped) as err:
        if os.environ.get("OQAT_DEBUG"):
            raise
        if isinstance(err, Stopped):  # files are written whole: a rerun resumes from what is there
            again = "; run it again to resume" if args.command in ("run", "train") else ""
            print(f"oqat {args.command}: stopped by {err.name}{again}", file=sys.stderr)
            return 128 + err.signum
        print(f"oqat {args.command}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
