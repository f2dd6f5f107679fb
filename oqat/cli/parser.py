"""The `oqat` command line: one sub-command per stage of the pipeline.

User mistakes (bad config field, missing file, bad architecture) raise ValueError
subclasses and end as one line on stderr with exit status 2; OQAT_DEBUG=1 shows the
traceback instead.
"""
import argparse
import os
import sys

from .deployment import add_export, add_latency, add_latency_model, add_predict
from .networks import add_convert_oqa, add_cost, add_eval, add_inherit, add_sample, add_search
from .options import check_outputs
from .runs import add_analyze, add_config, add_run, add_train

PARSERS = [add_run, add_cost, add_convert_oqa, add_inherit, add_analyze, add_train, add_config, add_export,
           add_latency, add_latency_model, add_predict, add_eval, add_search, add_sample]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oqat", description="Once Quantization-Aware Training")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    for p in sub.choices.values():
        p.set_defaults(usage_error=p.error)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..core.faults import Stopped, stop_on_signals
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

