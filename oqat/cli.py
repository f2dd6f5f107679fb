"""The `oqat` command line: one sub-command per stage of the pipeline.

User mistakes (bad config field, missing file, bad architecture) raise ValueError
subclasses and end as one line on stderr with exit status 2; OQAT_DEBUG=1 shows the
traceback instead.
"""
import argparse
import json
import os
import sys



def _bits(text: str) -> int:
    from .quant import check_bits
    try:
        return check_bits(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be 1..8 or 32, got {text!r}") from None


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
    p.add_argument("--bits", type=_bits, default=4, help="weight and activation bits (32 = full precision)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args):
    from .cost import cost
    from .space import Arch, get_space
    space = get_space(args.space) if args.space else None
    arch = Arch.parse(args.arch, space)
    result = cost(arch, space, args.bits)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result, f"{arch}  ({args.bits}-bit)")


# --- convert-oqa ----------------------------------------------------------------------
def add_convert_oqa(sub):
    p = sub.add_parser("convert-oqa", help="convert one of the authors' checkpoints to oqat's format")
    p.add_argument("checkpoint")
    p.add_argument("--bits", type=_bits, required=True, help="the checkpoint's bit-width (b4, b3, b2 in its name)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_convert_oqa)


def cmd_convert_oqa(args):
    from .oqa import load_oqa_checkpoint
    net = load_oqa_checkpoint(args.checkpoint, args.bits)
    net.save(args.out, {"source": os.path.basename(args.checkpoint)})
    print(f"wrote {args.out} (mbv3 supernet, {args.bits}-bit)")


# --- inherit --------------------------------------------------------------------------
def add_inherit(sub):
    p = sub.add_parser("inherit", help="bit inheritance: a b-bit supernet to B < b bits (steps x 2^(b-B))")
    p.add_argument("checkpoint", help="a supernet file (supernet.pt of a run)")
    p.add_argument("--bits", type=_bits, required=True, help="target bits, lower than the source's")
    p.add_argument("--out", required=True)
    p.add_argument("--reinit-steps", action="store_true",
                   help="ablation: mark the steps for LSQ re-initialisation from data instead of doubling")
    p.set_defaults(func=cmd_inherit)


def cmd_inherit(args):
    from .inherit import inherit_file
    net = inherit_file(args.checkpoint, args.bits, args.out, args.reinit_steps)
    print(f"wrote {args.out} ({net.space.name} supernet, {net.bits}-bit)")


# --- analyze --------------------------------------------------------------------------
def add_analyze(sub):
    p = sub.add_parser("analyze", help="which architectural traits make a subnet quantization-friendly")
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=40, help="architectures to sample (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-images", type=int, default=500)
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/analysis)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args):
    from .analysis import AnalysisConfig, analyze
    if args.samples < 4:
        raise ValueError(f"--samples must be at least 4 for rank correlations, got {args.samples}")
    cfg = AnalysisConfig(samples=args.samples, seed=args.seed, calib_images=args.calib_images,
                         val_images=args.val_images)
    result = analyze(args.run_dir, cfg, args.out,
                     progress=lambda i, n: print(f"\r  evaluated {i}/{n} architectures", end="", file=sys.stderr))
    print(file=sys.stderr)
    out = args.out or os.path.join(args.run_dir, "analysis")
    s = result["summary"]
    for t, c in s["correlations"].items():
        print(f"  loss {s['drop_from']}->{s['drop_to']} bits vs {t:<12} rho={c['rho']}")
    print(f"wrote {out}/analysis.md, analysis.json and plots")


# --- train ----------------------------------------------------------------------------
def add_train(sub):
    p = sub.add_parser("train", help="train the supernet for one stage at train.bits (resumes in run.dir)")
    p.add_argument("config", nargs="?", default=None, help="YAML experiment config (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.05")
    p.add_argument("--quiet", action="store_true", help="no progress bar, one line per epoch")
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    from .config import load
    from .experiment import ExperimentConfig
    from .train import train
    # A first positional with '=' is an override, not a config file.
    if args.config is not None and "=" in args.config:
        args.overrides, args.config = [args.config, *args.overrides], None
    cfg = load(ExperimentConfig, args.config, [*args.overrides, *(["run.quiet=true"] if args.quiet else [])])
    final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {os.path.join(cfg.run.dir, 'supernet.pt')}  " + json.dumps(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}))


# --- export ---------------------------------------------------------------------------
def add_export(sub):
    p = sub.add_parser("export", help="ONNX (explicit low-bit QDQ), packed weights, arch.json and a model card")
    p.add_argument("checkpoint", help="a supernet file (with --arch) or a subnet file")
    p.add_argument("--arch", default=None, help="JSON file, JSON string or compact string (needed for a supernet)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--calib-images", type=int, default=2000, help="training images for BN recalibration (supernet)")
    p.add_argument("--test-images", type=int, default=1000, help="test images for the card's top-1 (0: skip)")
    p.add_argument("--data-config", default=None,
                   help="experiment YAML whose data section to use (default: the checkpoint's own)")
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    from .export import export_checkpoint
    from .space import Arch
    data_cfg = None
    if args.data_config is not None:
        from .config import load
        from .experiment import ExperimentConfig
        data_cfg = load(ExperimentConfig, args.data_config).data
    facts = export_checkpoint(args.checkpoint, Arch.parse(args.arch) if args.arch else None, args.out,
                              args.calib_images, args.test_images, data_cfg)
    sizes, test = facts["sizes"], facts.get("test")
    print(f"wrote {args.out}: {facts['arch']} at {facts['bits']} bits; packed {sizes['packed']:,} bytes "
          f"(fp32 state dict {sizes['fp32_state_dict']:,}), onnx {sizes['onnx']:,}" +
          (f"; test top-1 {test['torch_top1']:.2f}% (onnxruntime {test['onnx_top1']:.2f}%, "
           f"agreement {test['top1_agreement']:.2f}%)" if test else ""))


# --- latency --------------------------------------------------------------------------
def add_latency(sub):
    p = sub.add_parser("latency", help="median latency in onnxruntime (CPU) and PyTorch on this machine")
    p.add_argument("source", help="an exported folder, a subnet file, or a supernet file with --arch")
    p.add_argument("--arch", default=None, help="JSON file, JSON string or compact string")
    p.add_argument("--batch", type=int, action="append", default=None,
                   help="batch size, repeatable; batch 1 is always measured")
    p.add_argument("--runs", type=int, default=50, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    p.add_argument("--threads", type=int, default=1, help="threads for both engines")
    p.add_argument("--table", default=None,
                   help="JSON latency table {arch: ms} (one per device) to add the onnxruntime batch-1 ms to")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_latency)


def cmd_latency(args):
    from .latency import device_name, load_for_latency, measure, update_table
    from .space import Arch
    batches = sorted({1, *(args.batch or [])})
    if batches[0] < 1 or args.threads < 1:
        raise ValueError(f"--batch and --threads must be >= 1, got batches {batches}, threads {args.threads}")
    net, onnx_path = load_for_latency(args.source, Arch.parse(args.arch) if args.arch else None)
    result = measure(net, batches, args.runs, args.warmup, args.threads, onnx_path)
    arch = net.arch.to_str()
    if args.table:
        update_table(args.table, arch, result["onnxruntime"][1])
    if args.json:
        print(json.dumps({"arch": arch, "bits": net.bits, "device": device_name(), "threads": args.threads,
                          "ms": result}))
    else:
        rows = {f"{engine} batch {b} (ms)": ms for engine, by_batch in result.items() for b, ms in by_batch.items()}
        print_table(rows, f"{arch} ({net.bits}-bit) on {device_name()}, {args.threads} thread(s)")
    if args.table:
        print(f"updated {args.table}", file=sys.stderr)


# --- eval / search / sample -------------------------------------------------------------
def _add_supernet_options(p, calib_default: int = 2000):
    p.add_argument("checkpoint", help="a supernet file (supernet.pt of a run)")
    p.add_argument("--calib-images", type=int, default=calib_default,
                   help="training images (fixed seeded subset) for BN recalibration")
    p.add_argument("--dataset", default=None, help="data.name (default: the checkpoint run's data)")
    p.add_argument("--data-root", default=None, help="data.root (default: the checkpoint run's data)")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="DataConfig override, repeatable, e.g. --data val_size=5000")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _open_supernet(args):
    import torch
    from .evaluate import open_supernet
    overrides = [*([f"name={args.dataset}"] if args.dataset else []),
                 *([f"root={args.data_root}"] if args.data_root else []), *args.data]
    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {args.calib_images}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return open_supernet(args.checkpoint, overrides, device)


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1/top-5 and costs of one subnet (BN recalibrated) of a supernet")
    _add_supernet_options(p)
    p.add_argument("--arch", required=True, help="JSON file, JSON string or compact string")
    p.add_argument("--split", choices=["val", "test"], default="val", help="held-out val (search) or test (reports)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args):
    from .cost import cost
    from .data import eval_batches
    from .evaluate import evaluate, prepare_subnet
    from .space import Arch
    net, data_cfg, splits = _open_supernet(args)
    arch = Arch.parse(args.arch, net.space)
    sub = prepare_subnet(net, arch, data_cfg, splits, args.calib_images, args.seed)
    result = evaluate(sub, eval_batches(getattr(splits, args.split), data_cfg, arch.r))
    result = {"arch": arch.to_str(), "bits": net.bits, "split": args.split, **result,
              **cost(arch, net.space, net.bits)}
    if args.json:
        print(json.dumps(result))
    else:
        print_table({k: v for k, v in result.items() if k not in ("arch", "bits", "split")},
                    f"{arch}  ({net.bits}-bit, {data_cfg.name} {args.split})")


def add_search(sub):
    p = sub.add_parser("search", help="NSGA-II Pareto search of val top-1 against cost under budgets")
    _add_supernet_options(p)
    p.add_argument("--budget", action="append", default=[], metavar="METRIC<=VALUE",
                   help="repeatable, e.g. bitops<=2e8; metrics: macs, params, bitops, flops_q, size_bits, latency")
    p.add_argument("--metric", default=None, help="cost objective (default: the first budget's metric, else bitops)")
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=5, help="offspring rounds after the initial population")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-images", type=int, default=None, help="score on a fixed seeded subset of val (speed)")
    p.add_argument("--latency-table", default=None, help="JSON {arch string: ms} enabling the latency metric")
    p.add_argument("--predictor", action="store_true",
                   help="pre-screen candidates with an accuracy predictor; the front is confirmed by real evaluation")
    p.add_argument("--pairs", default=None, help="(arch, val_top1) JSON (oqat sample) to start the predictor from")
    p.add_argument("--out", default="search", help="output folder for pareto.json, evaluated.json, pareto.png")
    p.set_defaults(func=cmd_search)


def cmd_search(args):
    from .predictor import load_pairs
    from .search import parse_budget, read_latency_table, search, write_outputs
    if args.population < 2 or args.generations < 0:
        raise ValueError(f"--population must be >= 2 and --generations >= 0, got {args.population}, {args.generations}")
    latency = args.latency_table is not None
    budgets = [parse_budget(b, latency) for b in args.budget]
    if args.metric is not None:
        parse_budget(f"{args.metric}<=1", latency)  # same check and message as a budget's metric
    net, data_cfg, splits = _open_supernet(args)
    table = read_latency_table(args.latency_table, net.space) if latency else None
    pairs = load_pairs(args.pairs, net.space) if args.pairs else None
    result = search(net, data_cfg, splits, budgets, args.population, args.generations, args.seed, args.metric,
                    args.calib_images, args.val_images, table, args.predictor or pairs is not None, pairs,
                    log=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    write_outputs(result, args.out)
    m = result.metric
    for p in result.front:
        print(f"  {p['arch']:<48} {m} {p[m]:>14,.0f}  val {p['val_top1']:6.2f}%  test {p['test_top1']:6.2f}%")
    print(f"wrote {args.out}/pareto.json ({len(result.front)} on the front, {result.evaluations} evaluated"
          f"{f', {result.predicted} predicted only' if result.settings['predictor'] else ''}, {result.seconds:.0f} s)")


def add_sample(sub):
    p = sub.add_parser("sample", help="(arch, val top-1) pairs of random subnets, and a predictor's quality on them")
    _add_supernet_options(p)
    p.add_argument("--n", type=int, required=True, help="distinct random architectures to evaluate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-images", type=int, default=None, help="score on a fixed seeded subset of val (speed)")
    p.add_argument("--out", required=True, help="pairs JSON file")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args):
    from .predictor import fit_and_score, save_pairs
    from .search import Scorer, sample_points
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    net, data_cfg, splits = _open_supernet(args)
    scorer = Scorer(net, data_cfg, splits, args.calib_images, args.val_images, args.seed)
    points = sample_points(scorer, args.n, args.seed)
    save_pairs(args.out, points)
    print(f"wrote {args.out} ({len(points)} pairs)")
    if len(points) >= 4:
        from .space import Arch
        _, q = fit_and_score([(Arch.parse(p["arch"], net.space), p["val_top1"]) for p in points], net.space, seed=args.seed)
        print(f"  predictor on {q['n']} held-out pairs: Kendall tau {q['kendall_tau']:.3f}, RMSE {q['rmse']:.2f} points")


# --- config -----------------------------------------------------------------------------
def add_config(sub):
    p = sub.add_parser("config", help="show the experiment config's defaults, with a comment per field")
    p.add_argument("action", choices=["show"])
    p.set_defaults(func=cmd_config)


def cmd_config(args):
    from .config import describe
    from .experiment import ExperimentConfig
    print(describe(ExperimentConfig), end="")


# --- run ------------------------------------------------------------------------------
def add_run(sub):
    p = sub.add_parser("run", help="the whole pipeline a config describes: stages, search, export, report")
    p.add_argument("config", help="YAML config (see `oqat config show`)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. run.dir=runs/x")
    p.add_argument("--quiet", action="store_true", help="no progress bars (for log files)")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    from . import config
    from .experiment import ExperimentConfig
    from .pipeline import run_pipeline
    cfg = config.load(ExperimentConfig, args.config, args.overrides + (["run.quiet=true"] if args.quiet else []))
    run_pipeline(cfg)


PARSERS = [add_run, add_cost, add_convert_oqa, add_inherit, add_analyze, add_train, add_config, add_export, add_latency, add_eval, add_search, add_sample]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oqat", description="Once Quantization-Aware Training")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, KeyboardInterrupt) as err:
        if os.environ.get("OQAT_DEBUG"):
            raise
        if isinstance(err, KeyboardInterrupt):
            print("oqat: interrupted", file=sys.stderr)
            return 130
        print(f"oqat {args.command}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
