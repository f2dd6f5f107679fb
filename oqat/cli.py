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
    arch = Arch.parse(args.arch)
    space = get_space(args.space or arch.space)
    if arch.space != space.name:
        raise ValueError(f"architecture is from space '{arch.space}', not '{space.name}'")
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


PARSERS = [add_cost, add_convert_oqa, add_inherit, add_analyze]


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
