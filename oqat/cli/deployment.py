"""The commands on deployed networks: export, latency, latency-model, predict.
"""
import json
import os
import sys

from .options import (
    NETWORK_HELP,
    add_data_options,
    add_output,
    add_settings,
    bits_label,
    data_overrides,
    print_table,
    run_settings,
    warn_untrained,
)


def add_export(sub):
    p = sub.add_parser("export", help="integer ONNX graph, QONNX, packed weights, arch.json, facts.json and a "
                                      "model card with speed")
    p.add_argument("checkpoint", help=NETWORK_HELP)
    p.add_argument("--arch", default=None, help="JSON file, JSON string or compact string (needed for a supernet)")
    add_output(p, "--out", True, required=True, help="output folder")
    add_settings(p, "search.calib_images", "search.seed", "export.test_images", "export.speed_rounds", of_run=True)
    add_data_options(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    from ..core.typed import apply_overrides
    from ..data.config import DataConfig
    from ..deploy.export import export_checkpoint
    from ..files.checkpoints import load_model, subnet_arch
    from ..files.layout import ExportLayout
    from ..files.records import write_facts
    from ..nets.supernet import Supernet
    path = args.checkpoint
    net, ckpt = load_model(path)
    cfg = run_settings(args, ckpt)
    overrides = data_overrides(args)
    if isinstance(net, Supernet):
        warn_untrained(net, subnet_arch(net, args.arch, path))
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
    from ..deploy.export import speedup
    s, test, speed = facts["sizes"], facts.get("test"), facts.get("speed")
    line = (f"{facts['arch']} at {bits_label(facts['bits'])}; onnx {s['onnx'] / 1024:,.1f} KiB, "
            f"packed {s['packed'] / 1024:,.1f} "
            f"KiB (fp32 {s['fp32'] / 1024:,.1f} KiB)")
    if test:
        line += f"; test top-1 on {test['n']:,} test images: PyTorch {test['torch_top1']:.2f}%" + "".join(
            f", {r} {v['top1']:.2f}% (agreement {v['top1_agreement']:.2f}%)" for r, v in test["runtimes"].items())
    if speed:
        line += f"; speed-up over the fastest fp32 (below 1: slower), {speed['threads']} thread(s): " + ", ".join(
            f"{speedup(ms):.2f}x at batch {b}" for b, ms in speed["batches"].items())
    return line


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
    from ..core.machine import cpu_model
    from ..deploy.latency import deployed_engine, load_for_latency, measure_latency
    from ..files.records import update_latency_table
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
        print_table(rows, f"{arch} ({bits_label(net.bits)}) on {cpu_model()}, {args.threads} thread(s)")
    if args.table:
        print(f"updated {args.table}", file=sys.stderr)


def add_latency_model(sub):
    p = sub.add_parser("latency-model", help="measure what each part of a space's networks costs in oqat's runtime "
                                             "here: a file that prices any architecture in ms (search budgets "
                                             "latency<=MS)")
    p.add_argument("supernet", help="a supernet file: its space and bit-width(s) are modelled")
    add_output(p, "--out", False, required=True, help="the latency model file to write (JSON)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads the times hold for (default 1)")
    p.add_argument("--batch", type=int, default=1, help="batch size the times hold for (default 1)")
    p.add_argument("--rounds", type=int, default=7, help="timed runs per measured network; medians kept (default 7)")
    p.add_argument("--resolutions", type=int, nargs="+", default=None,
                   help="resolutions to measure (default: the space's, about every 16 px); others are interpolated")
    p.set_defaults(func=cmd_latency_model)


def cmd_latency_model(args):
    from tqdm import tqdm

    from ..files.checkpoints import load_supernet
    from ..quant.lsq import FULL_PRECISION
    from ..runtime import latency_model
    if args.threads < 1 or args.batch < 1 or args.rounds < 1:
        raise ValueError(f"--threads, --batch and --rounds must be >= 1, got {args.threads}, {args.batch}, "
                         f"{args.rounds}")
    net, _ = load_supernet(args.supernet)
    widths = net.space.bit_widths or (net.bits,)
    if widths == (FULL_PRECISION,):
        raise ValueError(f"'{args.supernet}' is a full-precision supernet: oqat's runtime runs quantized networks")
    bad = [r for r in args.resolutions or [] if r not in net.space.resolutions]
    if bad:
        raise ValueError(f"--resolutions {bad} are not in space '{net.space.name}' ({list(net.space.resolutions)})")
    partial = args.out + ".partial"  # the measurements so far: a stopped build resumes from them
    bar = tqdm(desc="latency model", unit="net", dynamic_ncols=True)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)

    model = latency_model.build(net.space, widths, args.threads, args.batch, args.rounds,
                                tuple(sorted(args.resolutions)) if args.resolutions else None, partial, progress)
    bar.close()
    model.save(args.out)
    os.remove(partial)
    print(f"wrote {args.out}: {len(model.parts):,} parts of space '{model.space.name}' at "
          f"{', '.join(map(str, model.bits))} bits, {model.resolutions[0]}-{model.resolutions[-1]} px; "
          f"{model.describe()}")


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
    from ..deploy.preprocess import image_files
    from ..deploy.runners import Runner
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
