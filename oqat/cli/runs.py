"""The commands on runs and their configs: train, run, config, analyze.
"""
import json
import os
import sys

from .options import add_output, add_settings, bits_label, load_experiment, settings, start_training


def add_analyze(sub):
    p = sub.add_parser("analyze", help="which architectural traits make a subnet quantization-friendly")
    p.add_argument("run_dir", help="a run folder of `oqat run` (its stages/ hold the supernets)")
    add_settings(p, *(f"analysis.{name}" for name in
                      ("samples", "seed", "calib_images", "val_images", "bootstrap", "bands")), of_run=True)
    add_output(p, "--out", True, default=None, help="output folder (default RUN_DIR/analysis)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args):
    from ..config.settings import ExperimentConfig
    from ..core.typed import load
    from ..files.layout import AnalysisLayout, RunLayout
    from ..search.analysis import analyze, format_corr
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
        print(f"  {bits_label(b)}: mean loss {s['mean_loss'][b]:.2f} points")
        for t, c in s["correlations"][b].items():
            print(f"    vs {t:<12} rho {format_corr(c)}")
    print(f"wrote {out.markdown}, {out.json} and plots")


def add_train(sub):
    p = sub.add_parser("train", help="train the supernet for one stage at train.bits (resumes in run.dir)")
    p.add_argument("config", nargs="?", default=None, help="YAML experiment config (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.05")
    add_settings(p, "run.quiet")
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    from ..config.settings import check_inputs
    from ..files.layout import TrainingLayout
    from ..train.trainer import train
    with start_training(args, check_inputs) as cfg:
        final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {TrainingLayout(cfg.run.dir).supernet}  " + json.dumps(
            {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}))


def add_config(sub):
    p = sub.add_parser("config", help="show a config (default: the defaults) with a comment per field, or check it")
    p.add_argument("action", nargs="?", default="show", choices=["show", "check"],
                   help="show (default): the resolved config; check: what `oqat run` checks before it starts "
                        "(its data is there, run.dir can be written, ...)")
    p.add_argument("config", nargs="?", default=None, help="YAML experiment config (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. search.population=8")
    p.set_defaults(func=cmd_config)


def cmd_config(args):
    from ..core.faults import check_output
    from ..core.typed import describe
    from ..run.pipeline import check_run
    cfg = load_experiment(args)
    if args.action == "check":
        check_run(cfg)
        check_output(cfg.run.dir, "run.dir", folder=True)  # what the run folder's lock refuses
        print(f"ok: {args.config or 'the defaults'} is a valid config for `oqat run`, its data is there and "
              f"run.dir '{cfg.run.dir}' can be written")
    else:
        print(describe(cfg), end="")


def add_run(sub):
    p = sub.add_parser("run", help="the whole pipeline a config describes: stages, search, export, report")
    p.add_argument("config", help="YAML config (see `oqat config show`)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. run.dir=runs/x")
    add_settings(p, "run.quiet")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    from ..run.pipeline import check_run, run_pipeline
    with start_training(args, check_run) as cfg:
        run_pipeline(cfg)
