"""The commands on networks and architectures: cost, convert-oqa, inherit, eval, search, sample.
"""
import json
import os
import sys

from .options import (
    NETWORK_HELP,
    add_output,
    add_settings,
    add_supernet_options,
    bits_label,
    bits_option,
    open_network,
    print_table,
    settings,
    warn_untrained,
)

MIN_HELD_OUT = 10  # held-out pairs below which a predictor's Kendall tau and RMSE are noise


def add_cost(sub):
    p = sub.add_parser("cost", help="MACs, params, BitOPs, FLOPs_q and size of an architecture")
    p.add_argument("--space", default=None, help="search space (default: the architecture's)")
    p.add_argument("--arch", required=True, help="JSON file, JSON string or compact string")
    p.add_argument("--bits", type=bits_option, default=None,
                   help="weight and activation bits (32 = full precision; default: the bits an export's arch.json "
                        "records, else 4)")
    p.add_argument("--latency-model", default=None,
                   help="latency model file (oqat latency-model): also print the predicted ms in oqat's runtime")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args):
    from ..files.architectures import arch_bits, read_arch
    from ..nets.cost import arch_metrics
    from ..space.builtin import get_space
    space = get_space(args.space) if args.space else None
    arch = read_arch(args.arch, space)
    if args.bits is None:
        args.bits = arch_bits(args.arch) or 4
    result = arch_metrics(arch, space, args.bits)
    if args.latency_model:
        from ..nets.budget import LATENCY
        from ..runtime import latency_model
        from ..space.builtin import get_space
        model = latency_model.load(args.latency_model)
        widths = tuple(sorted(set(arch.b))) if arch.b else args.bits
        model.check_precision(widths, space or get_space(arch.space))
        result[LATENCY] = model.predict(arch, None if arch.b else args.bits)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(_readable(result), f"{arch}  ({'bits per block' if arch.b else bits_label(args.bits)})")


def add_convert_oqa(sub):
    p = sub.add_parser("convert-oqa", help="convert one of the authors' checkpoints to oqat's format")
    p.add_argument("checkpoint")
    p.add_argument("--bits", type=bits_option, required=True,
                   help="the checkpoint's bit-width (b4, b3, b2 in its name)")
    add_output(p, "--out", False, required=True, help="the oqat supernet file to write")
    p.set_defaults(func=cmd_convert_oqa)


def cmd_convert_oqa(args):
    from ..files.checkpoints import load_oqa_checkpoint, save_supernet
    net = load_oqa_checkpoint(args.checkpoint, args.bits)
    save_supernet(net, args.out, {"source": os.path.basename(args.checkpoint)})
    print(f"wrote {args.out} (mbv3 supernet, {bits_label(args.bits)})")


def add_inherit(sub):
    p = sub.add_parser("inherit", help="bit inheritance: a b-bit supernet to B < b bits (steps x 2^(b-B))")
    p.add_argument("checkpoint", help="a supernet file (supernet.pt of a run)")
    p.add_argument("--bits", type=bits_option, required=True, help="target bits, lower than the source's")
    add_output(p, "--out", False, required=True, help="the inherited supernet file to write")
    p.add_argument("--reinit-steps", action="store_true",
                   help="ablation: mark the steps for LSQ re-initialisation from data instead of doubling")
    p.set_defaults(func=cmd_inherit)


def cmd_inherit(args):
    from ..train.inherit import inherit_file
    net = inherit_file(args.checkpoint, args.bits, args.out, args.reinit_steps)
    print(f"wrote {args.out} ({net.space.name} supernet, {bits_label(net.bits)})")


def _readable(costs: dict) -> dict:
    """Costs as printed: size in KiB, the unit of the report and of the export's sizes."""
    names = {"size_bits": "size (KiB)", "latency": "latency (ms, predicted)"}
    return {names.get(k, k): (v / 8192 if k == "size_bits" else v) for k, v in costs.items()}


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1/top-5 and costs of one subnet: of a supernet (BN recalibrated) "
                                    "or a subnet file")
    add_supernet_options(p, NETWORK_HELP)
    p.add_argument("--arch", default=None, help="JSON file, JSON string or compact string (needed for a supernet)")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="held-out val (search) or test (reports) (default val)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args):
    from ..data.batches import eval_batches
    from ..files.checkpoints import PACKED, SUBNET, SUPERNET, subnet_arch
    from ..nets.cost import arch_metrics
    from ..nets.supernet import Supernet
    from ..train.evaluate import evaluate, prepare_subnet
    net, cfg, data_cfg, splits = open_network(args, SUPERNET, SUBNET, PACKED)
    s = cfg.search
    arch = subnet_arch(net, args.arch, args.checkpoint)
    if isinstance(net, Supernet):
        warn_untrained(net, arch)
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
                    f"{arch}  ({bits_label(sub.bits)}; {data_cfg.name} {args.split}, {result['n']:,} images; {bn})")


def add_search(sub):
    p = sub.add_parser("search", help="NSGA-II Pareto search of val top-1 against cost under budgets")
    add_supernet_options(p)
    add_settings(p, *(f"search.{name}" for name in
                      ("budgets", "metric", "population", "generations", "val_images", "predictor",
                       "latency_model")), of_run=True)
    p.add_argument("--latency-table", default=None,
                   help="latency table of `oqat latency --table` (same bits as CHECKPOINT) enabling the latency metric")
    p.add_argument("--pairs", default=None, help="(arch, val_top1) JSON (oqat sample) to start the predictor from")
    add_output(p, "--out", True, default="search",
               help="output folder for pareto.json, evaluated.json, pareto.png (default search)")
    p.set_defaults(func=cmd_search)


def cmd_search(args):
    from ..files.layout import SearchLayout
    from ..files.records import load_latency_table, load_pairs
    from ..nets.budget import LATENCY
    from ..search import search
    from ..search.front import write_outputs
    latency = args.latency_table is not None
    given = settings(args).search
    given.check_metrics(latency)  # the options given: their mistakes stop before the data loads
    if given.latency_model is not None and latency:
        raise ValueError("give --latency-table or --latency-model, not both")
    model = _latency_model(given.latency_model)
    net, cfg, data_cfg, splits = open_network(args)
    s = cfg.search
    if not latency and s.latency_model not in (None, "build"):  # the run's own file, where it named one
        model = model or _latency_model(s.latency_model)
    s.check_metrics(latency or model is not None)
    table = load_latency_table(args.latency_table, net.space, net.bits) if latency else None
    if table:
        print(f"  latency table: {len(table['ms'])} subnets at {bits_label(table['bits'])} on {table['device']}, "
              f"{table['threads']} thread(s)", file=sys.stderr)
    if model:
        model.check_precision(net.bits, net.space)
        print(f"  latency model: {model.describe()}", file=sys.stderr)
    pairs = load_pairs(args.pairs, net.space) if args.pairs else None
    result = search(net, data_cfg, splits, s, model or (table and table["ms"]), pairs,
                    log=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    write_outputs(result, args.out)
    m, n_val = result.metric, min(s.val_images or len(splits.val), len(splits.val))
    print(f"  front ({m}): val top-1 on {n_val:,} val images, test top-1 on {len(splits.test):,} test images")
    for p in result.front:
        value = f"{p[m]:>9.2f} ms" if m == LATENCY else f"{p[m]:>14,.0f}"
        print(f"  {p['arch']:<48} {value}  val {p['val_top1']:6.2f}%  test {p['test_top1']:6.2f}%")
    print(f"wrote {SearchLayout(args.out).pareto} ({len(result.front)} on the front, {result.evaluations} evaluated"
          f"{f', {result.predicted} predicted only' if result.settings['predictor'] else ''}, {result.seconds:.0f} s)")


def _latency_model(path: str | None):
    """The latency model file `path` names (None: none), checked as measured on this machine."""
    from ..runtime import latency_model
    if path == "build":
        raise ValueError("search.latency_model: build measures a model in oqat run; here give its file "
                         "(oqat latency-model SUPERNET --out FILE, or a run's latency_model.json)")
    return latency_model.load(path) if path else None


def add_sample(sub):
    p = sub.add_parser("sample", help="(arch, val top-1) pairs of random subnets, and a predictor's quality on them")
    add_supernet_options(p)
    p.add_argument("--n", type=int, required=True, help="distinct random architectures to evaluate")
    add_settings(p, "search.val_images", of_run=True)
    add_output(p, "--out", False, required=True, help="pairs JSON file")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args):
    from ..files.records import save_pairs
    from ..search.predictor import fit_and_score
    from ..search.scoring import Scorer, sample_points
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    net, cfg, data_cfg, splits = open_network(args)
    s = cfg.search
    scorer = Scorer(net, data_cfg, splits, s.calib_images, s.val_images, s.seed)
    points = sample_points(scorer, args.n, s.seed)
    save_pairs(args.out, points)
    print(f"wrote {args.out} ({len(points)} pairs; val top-1 on {len(scorer.val):,} val images)")
    if len(points) >= 4:
        from ..space.arch import Arch
        pairs = [(Arch.parse(p["arch"], net.space), p["val_top1"]) for p in points]
        _, q = fit_and_score(pairs, net.space, seed=s.seed)
        few = (f" (only {q['n']} held-out pairs: too few to judge the predictor; sample 40 or more)"
               if q["n"] < MIN_HELD_OUT else "")
        print(f"  predictor on {q['n']} held-out pairs: Kendall tau {q['kendall_tau']:.3f}, "
              f"RMSE {q['rmse']:.2f} points{few}")
