"""What the sub-commands share: an option per config field (`add_settings`: --population is
search.population, with that field's default and comment, so each setting has one default
whether it comes from `oqat run`'s YAML or from a sub-command), output paths refused before any
work, opening a network file with its run's settings, and the start-up of a command that trains.
"""
import argparse
import contextlib
import functools
import json
import sys

NETWORK_HELP = "a supernet file (with --arch), a subnet or packed file, or an export folder (files.load_model)"


def bits_option(text: str) -> int:
    """One width for every layer (4, 4bit, fp; 32 = full precision)."""
    from ..quant.precision import Precision
    try:
        p = Precision.parse(text)
    except ValueError:
        p = None
    if p is None or p.mixed:
        raise argparse.ArgumentTypeError(f"bits must be 1..8 or 32 (fp), got {text!r}") from None
    return p.bits


def bits_label(bits) -> str:
    from ..quant.precision import Precision
    return Precision.of(bits).label


@functools.cache
def defaults():
    from ..config.settings import ExperimentConfig
    return ExperimentConfig()


def add_settings(p, *keys: str, of_run: bool = False) -> None:
    """An option per config field, e.g. "search.population" -> --population, documented by
    the field's comment and default (`of_run`: a command on a run's file takes that run's
    config first); `settings(args)` reads them back as a checked config."""
    from ..core.typed import field_comments
    for key in keys:
        section, name = key.split(".")
        part = getattr(defaults(), section)
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
    from ..core.typed import apply_overrides
    given = [(k, getattr(args, k)) for k in args.settings if getattr(args, k) is not None]
    return apply_overrides(base or defaults(), [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) else v}"
                                         for k, v in given])


def add_output(p, flag: str, folder: bool, **kwargs) -> None:
    """An output path option; `main` refuses a path that cannot take it before the command runs."""
    p.add_argument(flag, **kwargs)
    p.set_defaults(outputs={**(p.get_default("outputs") or {}), flag.lstrip("-").replace("-", "_"): (flag, folder)})


def check_outputs(args) -> None:
    from ..core.faults import check_output
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


@contextlib.contextmanager
def start_training(args, check):
    """The start of a command that trains (`oqat train`, `oqat run`): its config, loaded and
    checked before the heavy imports (fast errors), `check(cfg)` of what it needs from outside
    before the run folder exists (a bad input leaves none: the lock makes it), the CPU
    allocator setting, and the run folder's lock held while it runs."""
    cfg = settings(args, load_experiment(args))  # CONFIG KEY=VALUE..., then --quiet
    from ..core.faults import run_dir_lock
    from ..train.trainer import keep_freed_memory_on_cpu
    check(cfg)
    keep_freed_memory_on_cpu()
    with run_dir_lock(cfg.run.dir):
        yield cfg


def add_data_options(p):
    p.add_argument("--dataset", default=None, help="data.name (default: the file's run's data)")
    p.add_argument("--data-root", default=None, help="data.root (default: the file's run's data)")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="DataConfig override, repeatable, e.g. --data val_size=5000")


def data_overrides(args) -> list[str]:
    return [*([f"name={args.dataset}"] if args.dataset else []),
            *([f"root={args.data_root}"] if args.data_root else []), *args.data]


def add_supernet_options(p, what: str = "a supernet file (supernet.pt of a run)"):
    p.add_argument("checkpoint", help=what + "; settings not given default to its run's config")
    add_settings(p, "search.calib_images", "search.seed", of_run=True)
    add_data_options(p)
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, "
                                                   "else cpu)")


def run_settings(args, ckpt: dict):
    """The options given over the config of the run that wrote the file (its calibration images,
    seed, search settings), so that a run's numbers come out again; else over the defaults."""
    from ..config.settings import ExperimentConfig
    from ..core.typed import from_dict
    try:
        run = from_dict(ExperimentConfig, ckpt["config"], "config") if isinstance(ckpt.get("config"), dict) else None
    except ValueError as err:
        print(f"note: the run config in '{args.checkpoint}' does not load ({err}); using the defaults",
              file=sys.stderr)
        run = None
    return settings(args, run)


def open_network(args, *formats):
    """(network, settings, data config, splits) of the file args.checkpoint."""
    from ..files.checkpoints import open_model
    device = torch_device(args.device)
    net, ckpt, data_cfg, splits = open_model(args.checkpoint, data_overrides(args), device, *formats)
    return net, run_settings(args, ckpt), data_cfg, splits


def torch_device(name: str | None) -> str:
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


def warn_untrained(net, arch) -> None:
    import warnings

    from ..nets.supernet import UntrainedWarning
    for choice in net.untrained(arch):
        print(f"warning: the architecture runs {choice}, which this supernet never trained: "
              "its accuracy says little of the supernet", file=sys.stderr)
    warnings.simplefilter("ignore", UntrainedWarning)  # said above, before the work, in one line each


def load_experiment(args):
    """The experiment config of a sub-command's CONFIG and KEY=VALUE arguments, checked as it loads."""
    from ..config.settings import ExperimentConfig
    from ..core.typed import load
    # A first positional with '=' is an override, not a config file.
    if args.config is not None and "=" in args.config:
        args.overrides, args.config = [args.config, *args.overrides], None
    return load(ExperimentConfig, args.config, args.overrides)
