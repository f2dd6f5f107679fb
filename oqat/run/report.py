"""The run's report: results.json (everything measured), report.md and PNG plots."""
import math
import os

from ..core import io, typed
from ..deploy.export import measured_ms, speedup
from ..files import records
from ..files.layout import BEST, RunLayout, TrainingLayout
from ..nets.budget import LATENCY
from ..quant.precision import Precision


def _by_precision(results: dict) -> list:
    """A results dict keyed by precision (a group of exports may be BEST, last) in reading order."""
    return sorted(results.items(), key=lambda kv: (1,) if kv[0] == BEST else (0, *Precision.of(kv[0]).order))


def _label(group) -> str:
    return group if group == BEST else Precision.of(group).label


def compare_at_budgets(fronts: dict, n: int = 8, metric: str = "bitops") -> list[dict]:
    """At n budgets of `metric` (BitOPs, or latency where a latency model priced the fronts)
    spaced evenly (log scale) from the smallest to the largest uniform front member, the most
    accurate (val) mixed and uniform front members within each."""
    uniform = [p for k, f in fronts.items() if not Precision.of(k).mixed for p in f]
    mixed = [p for k, f in fronts.items() if Precision.of(k).mixed for p in f]
    if not uniform or not mixed or not all(metric in p for p in uniform + mixed):
        return []
    lo, hi = min(p[metric] for p in uniform), max(p[metric] for p in uniform)
    rows = []
    for i in range(n):
        budget = lo * (hi / lo) ** (i / (n - 1))
        best = {}
        for kind, points in (("mixed", mixed), ("uniform", uniform)):
            within = [p for p in points if p[metric] <= budget * (1 + 1e-9)]
            best[kind] = max(within, key=lambda p: p["val_top1"]) if within else None
        rows.append({metric: budget, **best})
    return rows


def _plot_fronts(searches: dict, path: str) -> None:
    """Each precision's front against BitOPs, and against predicted ms where a latency model priced
    them (the same points: a front in BitOPs need not be one in ms)."""
    from matplotlib.figure import Figure
    axes = ["bitops"] + ([LATENCY] if all(LATENCY in p for s in searches.values() for p in s["front"]) else [])
    fig = Figure(figsize=(6.5 * len(axes), 4.2))
    for ax, m in zip(fig.subplots(1, len(axes), squeeze=False)[0], axes):
        for key, s in _by_precision(searches):
            pts = [(p[m], p["val_top1"]) for p in s.get("evaluated", []) if m in p]
            line = ax.plot(*zip(*sorted((p[m], p["val_top1"]) for p in s["front"])),
                           marker="o", lw=1.5, label=f"{_label(key)} front")[0]
            if pts:
                ax.scatter(*zip(*pts), s=8, alpha=0.25, color=line.get_color())
        ax.set_xscale("log")
        ax.set(xlabel="BitOPs" if m == "bitops" else "predicted ms (latency model)", ylabel="val top-1 (%)",
               title="OQAT fronts per precision (dots: evaluated subnets)")
        ax.legend()
    io.write_png(path, fig)


def _plot_training(run_dir: str, stages: list[dict], path: str) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    offset = 0
    for st in stages:
        steps, epochs = [], []
        for rec in records.read_metrics(TrainingLayout(os.path.join(run_dir, st["dir"])).metrics):
            (steps if rec["kind"] == "step" else epochs).append(rec)
        label = _label(st["bits"])
        if steps:
            ax_loss.plot([offset + r["epoch"] for r in steps], [r["loss"] for r in steps], lw=1, label=label)
        for key, style in (("val_top1_largest", "-o"), ("val_top1_smallest", "--s")):
            if epochs and key in epochs[0]:
                ax_acc.plot([offset + r["epoch"] for r in epochs], [r[key] for r in epochs], style,
                            label=f"{label} {key.split('_')[-1]}")
        offset += st["epochs"]
    ax_loss.set(xlabel="epoch (all stages)", ylabel="loss (largest subnet)", title="Training")
    ax_acc.set(xlabel="epoch (all stages)", ylabel="val top-1 (%)", title="Largest and smallest subnets")
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    io.write_png(path, fig)


def write_report(cfg, stages: list[dict], searches: dict, exported: dict, wall_s: float,
                 recommended: dict | None = None) -> dict:
    run = RunLayout(cfg.run.dir)
    for bits in searches:  # the plot shows every evaluated point too
        ev = run.search(bits).evaluated
        if os.path.isfile(ev):
            searches[bits] = {**searches[bits], "evaluated": records.read_evaluated(ev)}
    plots = []
    if searches:
        _plot_fronts(searches, run.fronts_plot)
        plots.append(run.relative(run.fronts_plot))
    if stages:
        _plot_training(run.root, stages, run.training_plot)
        plots.append(run.relative(run.training_plot))
    results = {"config": typed.to_dict(cfg), "wall_s_this_invocation": wall_s, "stages": stages,
               "family": {b: s["family"] for b, s in searches.items()},
               "fronts": {b: s["front"] for b, s in searches.items()},
               "export": exported, "plots": plots}
    if recommended:
        results["recommended"] = recommended
    if (table := compare_at_budgets(results["fronts"])):
        results["mixed_vs_uniform"] = table
    if (table := compare_at_budgets(results["fronts"], 5, LATENCY)):
        results["mixed_vs_uniform_latency"] = table
    io.write_json(run.results, results)
    io.write_text(run.report, markdown(results))
    return results


def _family_unit(cfg: dict) -> str:
    return "predicted ms" if cfg["search"].get("family_by") == LATENCY else "BitOPs"


def _accuracy_note(cfg: dict) -> str:
    """Which images the search's val top-1 and the test top-1 are on."""
    val = min(cfg["search"]["val_images"] or cfg["data"]["val_size"], cfg["data"]["val_size"])
    return f"Val top-1 on {val:,} held-out training images, test top-1 on the whole test split."


def markdown(r: dict) -> str:
    cfg = r["config"]
    lines = [f"# OQAT run: {cfg['data']['name']}, space `{cfg['model']['space']}`", "",
             "## Stages", "", "| # | bits | epochs | wall (s) | val top-1 largest | val top-1 smallest |",
             "|---|---|---|---|---|---|"]

    def fmt(v):
        return f"{v:.2f}" if isinstance(v, (int, float)) else "-"

    for s in r["stages"]:
        m = s.get("metrics") or {}
        lines.append(f"| {s['index']} | {_label(s['bits'])} | {s['epochs']} | {fmt(s.get('wall_s'))} | "
                     f"{fmt(m.get('val_top1_largest'))} | {fmt(m.get('val_top1_smallest'))} |")
    if r["family"]:
        budgets = r["config"]["search"]["family"]
        lines += ["", "## OQATNets: the S, M, L family of each bit-width",
                  "", "The most accurate front subnet (chosen on val; test top-1 reported) within "
                  + ", ".join(f"{name} {100 * f:g}%" for name, f in zip("SML", budgets))
                  + f" of the largest subnet's {_family_unit(cfg)}. {_accuracy_note(cfg)} Size: the weights at "
                  "their bits (analytic).",
                  "", "| bits | net | architecture | val top-1 | test top-1 | MACs | BitOPs | FLOPs_q | size (KiB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for bits, fam in _by_precision(r["family"]):
            for name, b in fam.items():
                if b is None:
                    lines.append(f"| {_label(bits)} | {name} | none on the front within budget | | | | | | |")
                    continue
                lines.append(f"| {_label(bits)} | {name} | `{b['arch']}` | {b['val_top1']:.2f} | "
                             f"{b.get('test_top1', float('nan')):.2f} | {b['macs'] / 1e6:.2f} M | "
                             f"{b['bitops'] / 1e6:.1f} M | {b['flops_q'] / 1e6:.2f} M | "
                             f"{b['size_bits'] / 8192:.1f} |")
        lines += ["", "## Pareto fronts", ""]
        for bits, front in _by_precision(r["fronts"]):
            lines.append(f"- {_label(bits)}: " + ", ".join(f"{p['bitops'] / 1e6:.1f} M BitOPs -> "
                                                          f"{p['val_top1']:.2f}%" for p in front))
    if r.get("recommended"):
        lines += ["", "## Recommended family: every front together",
                  "", "Three distinct subnets of any precision, uniform or mixed: each budget's most accurate (val) "
                  + ("within its fraction of the largest subnet's predicted ms (the latency model)"
                     if _family_unit(cfg) != "BitOPs" else "within its fraction of the largest subnet's BitOPs and "
                     "of its MACs (a CPU's time follows the MACs more than the bits)")
                  + f", none taken twice. {_accuracy_note(cfg)}", "",
                  "| net | bits | architecture | val top-1 | test top-1 | BitOPs |", "|---|---|---|---|---|---|"]
        for name, b in r["recommended"].items():
            lines.append(f"| {name} | none within budget | | | | |" if b is None else
                         f"| {name} | {_label(b['bits'])} | `{b['arch']}` | {b['val_top1']:.2f} | "
                         f"{b.get('test_top1', math.nan):.2f} | {b['bitops'] / 1e6:.1f} M |")
    for key, metric, title in (("mixed_vs_uniform", "bitops", "BitOPs"),
                               ("mixed_vs_uniform_latency", LATENCY, "predicted latency")):
        if not r.get(key):
            continue
        lines += ["", f"## Mixed against uniform precision at equal {title}", "",
                  "The best front member (val) within each budget; test top-1 in brackets.", "",
                  f"| {title} budget | mixed | uniform | mixed - uniform (val) |", "|---|---|---|---|"]

        def amount(v, metric=metric):
            return f"{v / 1e6:.1f} M" if metric == "bitops" else f"{v:.3f} ms"

        for row in r[key]:
            m, u = row["mixed"], row["uniform"]
            cell = ("-" if p is None else f"{p['val_top1']:.2f} ({p.get('test_top1', math.nan):.2f}), "
                    f"{amount(p[metric])}" for p in (m, u))
            gap = f"{m['val_top1'] - u['val_top1']:+.2f}" if m and u else "-"
            lines.append(f"| {amount(row[metric])} | " + " | ".join(cell) + f" | {gap} |")
    where = [(k, p) for k, f in r["fronts"].items() if Precision.of(k).mixed for p in f if "stage_bits" in p]
    if where:
        ms = all(LATENCY in p for _, p in where)  # a front priced by a latency model: its ms beside the BitOPs
        lines += ["", "## Where the bits went", "", "Bits of each mixed front member: first block | each stage's "
                  "blocks | head.", "", "| BitOPs |" + (" predicted ms |" if ms else "") + " val top-1 | first | "
                  "stages | head |", "|---|---|---|---|---|" + ("---|" if ms else "")]
        for _, p in sorted(where, key=lambda kp: kp[1]["bitops"]):
            sb = p["stage_bits"]
            stages = " / ".join("".join(map(str, st)) for st in sb["stages"])
            lines.append(f"| {p['bitops'] / 1e6:.1f} M |" + (f" {p[LATENCY]:.3f} |" if ms else "")
                         + f" {p['val_top1']:.2f} | {sb['first_block']} | {stages} | {sb['head']} |")
    if r["export"]:
        lines += ["", "## Exported (integer ONNX, QONNX, packed weights)", "",
                  "Files: .onnx is model.onnx (the integer graph, weights at INT4/INT2 and their scales), packed is "
                  "weights.oqpk (codes at their bits with BN and steps, in a torch zip), fp32 the same network's "
                  "float graph. Test top-1 on the test images each row names (the tables above use the whole "
                  "test split). Speed-up: the fastest fp32 engine's median ms over the fastest export's; below 1 "
                  "the export is slower.", "",
                  "| bits | net | folder | .onnx (KiB) | packed (KiB) | fp32 (KiB) | test top-1 per runtime "
                  "(agreement with PyTorch) | speed-up over fp32, batch 1, 16 |",
                  "|---|---|---|---|---|---|---|---|"]
        for bits, members in _by_precision(r["export"]):
            for name, f in members.items():
                t, s, sp = f.get("test") or {}, f["sizes"], f.get("speed")
                top1 = ", ".join(f"{rt} {v['top1']:.2f}% ({v['top1_agreement']:.2f}%)"
                                 for rt, v in t.get("runtimes", {}).items()) or "not measured"
                top1 = f"{t['n']:,} images: {top1}" if t else top1
                ratios = ", ".join(f"{speedup(ms):.2f}x" for ms in sp["batches"].values()) if sp else "not measured"
                kib = " | ".join(f"{s[k] / 1024:,.1f}" for k in ("onnx", "packed", "fp32"))  # the CLI's unit
                lines.append(f"| {_label(bits)} | {name} | {f['dir']} | {kib} | "
                             f"{top1} | {ratios} |")
        # The machine without its torch part, whose thread count is torch's setting, not the timing's.
        timed = {(f["speed"]["threads"], f["machine"].split(", torch")[0]) for members in r["export"].values()
                 for f in members.values() if f.get("speed")}
        lines += [f"\nSpeed measured with {t} thread(s) on {m}; each member's MODEL_CARD.md has the times."
                  for t, m in sorted(timed)]
        priced = [(bits, name, f) for bits, members in _by_precision(r["export"]) for name, f in members.items()
                  if f.get("latency_model")]
        if priced:
            lm = priced[0][2]["latency_model"]
            lines += ["", "## Latency: predicted and measured", "",
                      f"The latency model ({lm['model']}) against the export timed end to end in oqat's runtime "
                      f"(batch {lm['batch']}, median).", "",
                      "| bits | net | predicted ms | measured ms | error |", "|---|---|---|---|---|"]
            for bits, name, f in priced:
                pred, meas = f["latency_model"]["predicted_ms"], measured_ms(f)
                lines.append(f"| {_label(bits)} | {name} | {pred:.3f} | " + (
                    f"{meas:.3f} | {100 * (pred - meas) / meas:+.1f}% |" if meas else "not measured | |"))
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]]
    return "\n".join(lines) + "\n"
