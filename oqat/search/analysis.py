"""What makes an architecture quantization-friendly: the paper's analysis at our scale.

Samples architectures (seeded) from the part of the space the run's quantized supernets
trained, evaluates each with every supernet that trained it, and relates the accuracy each
lower bit-width loses against a reference to depth, expand ratio, kernel size and resolution
(those the training varied): Spearman rank correlations with their p-values and bootstrap
confidence intervals, the same inside cost bands, and the pairs of similar cost and similar
reference accuracy whose low-bit accuracies differ most.

The reference is the highest-precision supernet that trained the same subnets (the 4-bit
supernet of a 4 -> 3 -> 2 run whose full-precision stage trained the largest alone); where
no such supernet is above the lowest bit-width, it is the largest subnet of the
highest-precision supernet, one accuracy for every architecture, and the report says so.
"""
import dataclasses
import os
import random
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from ..config.settings import AnalysisConfig
from ..core import io
from ..data.batches import eval_batches
from ..data.splits import load_splits, subset
from ..files import checkpoints
from ..files.layout import AnalysisLayout, RunLayout
from ..nets.cost import arch_metrics
from ..nets.supernet import Supernet
from ..quant.lsq import FULL_PRECISION
from ..quant.precision import Precision
from ..space.arch import Arch
from ..space.structure import SearchSpace
from ..train.evaluate import evaluate, prepare_subnet
from .front import pareto_indices

# Each trait and the Arch field whose choices move it: a trait is analysed only where its field was trained elastic.
TRAITS = {"depth": "d", "mean_expand": "e", "mean_kernel": "ks", "resolution": "r"}
MIN_ARCHS = 10  # fewer distinct architectures give rank correlations too coarse to read


def traits(arch: Arch, space: SearchSpace) -> dict[str, float]:
    """Depth, mean expand ratio and kernel of the elastic blocks that run, and resolution."""
    active = space.active_blocks(arch)[1:]
    return {"depth": float(len(active)), "mean_expand": float(np.mean([e for *_, e in active])),
            "mean_kernel": float(np.mean([k for _, k, _ in active])), "resolution": float(arch.r)}


@dataclass
class Plan:
    """What the analysis compares: the supernets evaluated on each sampled subnet, and its reference."""
    space: SearchSpace  # the part of the space every compared supernet trained: samples come from it
    traits: list[str]  # the traits that part varies
    compared: list[int]  # bit-widths whose loss is measured, highest first
    reference: int  # bit-width of the reference supernet
    largest_only: bool  # the reference trained the largest subnet only: its accuracy is one number

    def describe(self) -> str:
        name = "full precision" if self.reference == FULL_PRECISION else f"{self.reference} bits"
        if self.largest_only:
            return (f"the largest subnet at {name}, one accuracy for every architecture: no higher-precision "
                    "supernet trained these subnets, so a trait's correlation mixes quantization loss with capacity")
        return f"each subnet at {name}, the highest precision that trained these subnets"


def plan(nets: dict[int, Supernet]) -> Plan:
    """The lowest bit-width's trained part, the quantized supernets that trained all of it, and the
    highest-precision supernet that trained it too (else the highest-precision largest)."""
    quantized = sorted((b for b in nets if b != FULL_PRECISION), reverse=True)
    if not quantized:
        raise ValueError("the run has no quantized supernet to analyse")
    fields = set(nets[quantized[-1]].elastic)
    covering = sorted((b for b, net in nets.items() if fields <= set(net.elastic)), reverse=True)
    space = nets[quantized[-1]].trained_space
    names = [t for t, f in TRAITS.items() if f in fields]
    if len(covering) > 1:
        return Plan(space, names, [b for b in covering[1:] if b != FULL_PRECISION], covering[0], False)
    # run_supernets found two bit-widths at least, so a higher precision than the lowest is there.
    return Plan(space, names, covering, max(nets), True)


def evaluate_archs(nets: dict[int, Supernet], p: Plan, archs: list[Arch], data_cfg, splits, cfg: AnalysisConfig,
                   progress=None) -> tuple[list[dict], float | None]:
    """One row per architecture: traits, MACs, and val top-1 and BitOPs at each bit-width; and the
    reference's one accuracy where it is the largest subnet's."""
    val = subset(splits.val, min(cfg.val_images, len(splits.val)), cfg.seed)

    def top1(net: Supernet, arch: Arch) -> float:
        sub = prepare_subnet(net, arch, data_cfg, splits, cfg.calib_images, cfg.seed)
        return evaluate(sub, eval_batches(val, data_cfg, arch.r))["top1"]

    fixed = top1(nets[p.reference], nets[p.reference].space.largest()) if p.largest_only else None
    evaluated = p.compared if p.largest_only else [p.reference, *p.compared]
    rows = []
    for i, arch in enumerate(archs):
        row = {"arch": arch.to_str(), **traits(arch, p.space), "macs": arch_metrics(arch, p.space, 32)["macs"],
               "top1": {b: top1(nets[b], arch) for b in evaluated},
               "bitops": {b: arch_metrics(arch, p.space, b)["bitops"] for b in evaluated}}
        reference = fixed if p.largest_only else row["top1"][p.reference]
        row["loss"] = {b: reference - row["top1"][b] for b in p.compared}
        rows.append(row)
        if progress:
            progress(i + 1, len(archs))
    return rows, fixed


def rank_corr(x, y, n_boot: int, seed: int) -> dict:
    """Spearman's rho, its two-sided p-value, and a percentile bootstrap 95% interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p": None, "lo": None, "hi": None, "n": len(x)}
    r = spearmanr(x, y)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            boots.append(spearmanr(x[idx], y[idx]).statistic)
    lo, hi = map(float, np.percentile(boots, [2.5, 97.5])) if boots else (None, None)
    return {"rho": float(r.statistic), "p": float(r.pvalue), "lo": lo, "hi": hi, "n": len(x)}


def front(rows: list[dict], bits: int) -> list[int]:
    """Indices of the rows on the Pareto front of BitOPs and top-1 at `bits`, by BitOPs."""
    return pareto_indices(np.array([r["top1"][bits] for r in rows]), np.array([r["bitops"][bits] for r in rows]))


def summarise(rows: list[dict], p: Plan, cfg: AnalysisConfig) -> dict:
    lowest = p.compared[-1]
    out = {"reference": p.reference, "largest_only": p.largest_only, "bits": p.compared, "traits": p.traits,
           "mean_loss": {b: float(np.mean([r["loss"][b] for r in rows])) for b in p.compared},
           "correlations": {b: {t: rank_corr([r[t] for r in rows], [r["loss"][b] for r in rows], cfg.bootstrap,
                                             cfg.seed) for t in p.traits} for b in p.compared}}
    edges = np.quantile([r["macs"] for r in rows], np.linspace(0, 1, cfg.bands + 1))
    bands = []
    for b in range(cfg.bands):
        last = b == cfg.bands - 1
        sub = [r for r in rows if edges[b] <= r["macs"] and (r["macs"] < edges[b + 1] or last)]
        loss = [r["loss"][lowest] for r in sub]
        bands.append({"macs": [float(edges[b]), float(edges[b + 1])], "n": len(sub),
                      "rho": {t: rank_corr([r[t] for r in sub], loss, cfg.bootstrap, cfg.seed) for t in p.traits}})
    out["bands"] = bands
    out["pairs"] = [] if p.largest_only else divergent_pairs(rows, p.reference, lowest)
    out["fronts"] = {b: [rows[i]["arch"] for i in front(rows, b)] for b in rows[0]["top1"]}
    return out


def divergent_pairs(rows, hi: int, lo: int, cost_tol: float = 0.1, acc_tol: float = 1.0, top: int = 5) -> list:
    """Pairs within cost_tol (relative MACs) and acc_tol (points at `hi` bits), by |difference at `lo` bits|."""
    pairs = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            a, b = rows[i], rows[j]
            if abs(a["macs"] - b["macs"]) <= cost_tol * max(a["macs"], b["macs"]) and \
                    abs(a["top1"][hi] - b["top1"][hi]) <= acc_tol:
                pairs.append({"a": a["arch"], "b": b["arch"], "macs": [a["macs"], b["macs"]],
                              f"top1_{hi}bit": [a["top1"][hi], b["top1"][hi]],
                              f"top1_{lo}bit": [a["top1"][lo], b["top1"][lo]],
                              "gap": abs(a["top1"][lo] - b["top1"][lo])})
    return sorted(pairs, key=lambda p: -p["gap"])[:top]


def plot(rows: list[dict], summary: dict, out: AnalysisLayout) -> list[str]:
    from matplotlib.figure import Figure
    paths = []
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for b in rows[0]["top1"]:
        pts = [(r["bitops"][b], r["top1"][b]) for r in rows]
        ax.scatter(*zip(*pts), s=10, alpha=0.5, label=Precision.of(b).label)
        ax.plot(*zip(*[pts[i] for i in front(rows, b)]), lw=1.5)
    ax.set_xscale("log")
    ax.set(xlabel="BitOPs", ylabel="val top-1 (%)", title="Sampled subnets and Pareto fronts")
    ax.legend()
    paths.append(_save(fig, out.plot("accuracy_vs_bitops")))
    names, lowest = summary["traits"], summary["bits"][-1]
    fig = Figure(figsize=(3.2 * len(names), 3))
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], names):
        ax.scatter([r[t] for r in rows], [r["loss"][lowest] for r in rows], s=10, alpha=0.6)
        ax.set(xlabel=t, title=f"rho {format_corr(summary['correlations'][lowest][t])}")
    axes[0][0].set_ylabel(f"top-1 lost at {lowest} bits")
    paths.append(_save(fig, out.plot("loss_vs_traits")))
    return paths


def _save(fig, path: str) -> str:
    io.write_png(path, fig)
    return path


def run_supernets(run_dir: str) -> dict[int, tuple[Supernet, object]]:
    """(supernet, its data config) of the last trained supernet of each uniform bit-width in a
    run directory (later stages win), full precision included. A mixed-precision supernet is
    left out: the analysis relates what each uniform width loses to the architecture."""
    run = RunLayout(run_dir)
    if not os.path.isdir(run.stages_dir):
        raise ValueError(f"'{run_dir}' is not an oqat run directory (no {run.relative(run.stages_dir)}/ folder)")
    found = {}
    for stage in run.stages():
        if os.path.isfile(stage.supernet):
            net, ckpt = checkpoints.load_supernet(stage.supernet)
            if not Precision.of(net.bits).mixed:
                found[net.bits] = net, ckpt["data"]
    if len(found) < 2:
        raise ValueError(f"'{run_dir}' has {len(found)} finished supernet(s); the analysis compares at least "
                         "two bit-widths")
    return found


def analyze(run_dir: str, cfg: AnalysisConfig, out_dir: str | None = None, progress=None) -> dict:
    out = AnalysisLayout(out_dir) if out_dir else RunLayout(run_dir).analysis
    found = run_supernets(run_dir)
    nets = {b: net for b, (net, _) in found.items()}
    p = plan(nets)
    data_cfg = found[p.compared[-1]][1]
    if data_cfg is None:
        raise ValueError(f"the supernets of '{run_dir}' carry no data config")
    archs = p.space.sample_distinct(random.Random(cfg.seed), cfg.samples)
    if len(archs) < MIN_ARCHS:
        raise ValueError(f"the part of the space the {Precision.of(p.compared[-1])} supernet of '{run_dir}' trained "
                         f"holds {len(archs)} distinct architecture(s); the analysis needs at least {MIN_ARCHS}")
    splits = load_splits(data_cfg)
    os.makedirs(out.root, exist_ok=True)
    rows, fixed = evaluate_archs(nets, p, archs, data_cfg, splits, cfg, progress)
    summary = summarise(rows, p, cfg)
    summary["reference_top1"] = fixed
    summary["reference_text"] = p.describe()
    summary["val_images"] = min(cfg.val_images, len(splits.val))
    summary["calib_images"] = min(cfg.calib_images, len(splits.train))
    summary["plots"] = [os.path.basename(path) for path in plot(rows, summary, out)]
    result = {"config": dataclasses.asdict(cfg), "rows": rows, "summary": summary}
    io.write_json(out.json, result)
    io.write_text(out.markdown, markdown(summary, rows))
    return result


def format_corr(c: dict) -> str:
    """rho [95% CI], p; n/a where a trait or the loss was constant."""
    if c["rho"] is None:
        return "n/a"
    interval = "" if c["lo"] is None else f" [{c['lo']:+.2f}, {c['hi']:+.2f}]"
    return f"{c['rho']:+.2f}{interval}, p={c['p']:.2g}"


def markdown(s: dict, rows: list[dict]) -> str:
    bits, lowest = s["bits"], s["bits"][-1]
    lines = [f"# Quantization-friendly architectures ({len(rows)} distinct sampled subnets)", "",
             f"Sampled from the part of the space the quantized supernets trained (varying: {', '.join(s['traits'])}). "
             f"Loss: val top-1 points ({s['val_images']:,} held-out images, BN recalibrated on "
             f"{s['calib_images']:,} training images) lost against {s['reference_text']}"
             + (f" ({s['reference_top1']:.2f}%)" if s["reference_top1"] is not None else "") + ".", "",
             "Per trait: Spearman's rho with the loss, bootstrap 95% interval and p-value (positive: more of the "
             "trait, more lost).", "",
             "| trait | " + " | ".join(f"{Precision.of(b)} (mean loss {s['mean_loss'][b]:.2f})" for b in bits) + " |",
             "|---|" + "---|" * len(bits)]
    lines += [f"| {t} | " + " | ".join(format_corr(s["correlations"][b][t]) for b in bits) + " |" for t in s["traits"]]
    lines += ["", f"## At matched cost ({Precision.of(lowest)} loss)", "",
              "Inside each MACs band (quantiles of the samples), the rank correlation of each trait with the loss.", "",
              "| MACs band | n | " + " | ".join(s["traits"]) + " |", "|---|---|" + "---|" * len(s["traits"])]
    for b in s["bands"]:
        lines.append(f"| {b['macs'][0] / 1e6:.2f}-{b['macs'][1] / 1e6:.2f} M | {b['n']} | "
                     + " | ".join(format_corr(b["rho"][t]) for t in s["traits"]) + " |")
    if not s["largest_only"]:
        hi = s["reference"]
        lines += ["", f"## Similar cost and {Precision.of(hi)} accuracy, most different at {lowest} bits", ""]
        if not s["pairs"]:
            lines.append("No pair within 10% MACs and 1 point of accuracy among the samples.")
        for p in s["pairs"]:
            lines.append(f"- {p['gap']:.2f} points apart at {lowest} bits: `{p['a']}` ({p[f'top1_{hi}bit'][0]:.2f} -> "
                         f"{p[f'top1_{lowest}bit'][0]:.2f}) vs `{p['b']}` ({p[f'top1_{hi}bit'][1]:.2f} -> "
                         f"{p[f'top1_{lowest}bit'][1]:.2f})")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in s.get("plots", [])]
    return "\n".join(lines) + "\n"
