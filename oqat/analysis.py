"""What makes an architecture quantization-friendly: the paper's analysis at our scale.

Samples architectures (seeded), evaluates each with every supernet of a run (one per
bit-width), and relates the accuracy lost from the highest to the lowest bit-width to
depth, expand ratio, kernel size and resolution: Spearman rank correlations with
bootstrap confidence intervals, the same inside cost bands (does a shallower net at
higher resolution lose less, as the paper found?), and the pairs of similar cost and
similar high-bit accuracy whose low-bit accuracies differ most.
"""
import dataclasses
import json
import os
import random

import numpy as np
from scipy.stats import spearmanr

from . import checkpoint, data, files
from .cost import cost
from .evaluate import evaluate, prepare_subnet
from .experiment import AnalysisConfig
from .space import Arch, SearchSpace
from .supernet import Supernet

TRAITS = ("depth", "mean_expand", "mean_kernel", "resolution")


def traits(arch: Arch, space: SearchSpace) -> dict[str, float]:
    """Depth, mean expand ratio and kernel of the elastic blocks that run, and resolution."""
    active = space.active_blocks(arch)[1:]
    return {"depth": float(len(active)), "mean_expand": float(np.mean([e for *_, e in active])),
            "mean_kernel": float(np.mean([k for _, k, _ in active])), "resolution": float(arch.r)}


def sample_archs(space, n: int, seed: int) -> list[Arch]:
    rng, seen = random.Random(seed), {}
    for _ in range(100 * n):
        if len(seen) == n:
            break
        a = space.sample(rng)
        seen.setdefault(a, None)
    return list(seen)


def measure(supernets: dict[int, Supernet], archs: list[Arch], data_cfg, splits, cfg: AnalysisConfig,
            progress=None) -> list[dict]:
    """One row per architecture: traits, MACs, and val top-1 and BitOPs at each bit-width."""
    val = data.subset(splits.val, min(cfg.val_images, len(splits.val)), cfg.seed)
    rows, space = [], next(iter(supernets.values())).space
    for i, arch in enumerate(archs):
        row = {"arch": arch.to_str(), **traits(arch, space), "macs": cost(arch, space, 32)["macs"],
               "top1": {}, "bitops": {}}
        for bits, net in supernets.items():
            sub = prepare_subnet(net, arch, data_cfg, splits, cfg.calib_images, cfg.seed)
            row["top1"][bits] = evaluate(sub, data.eval_batches(val, data_cfg, arch.r))["top1"]
            row["bitops"][bits] = cost(arch, space, bits)["bitops"]
        rows.append(row)
        if progress:
            progress(i + 1, len(archs))
    return rows


def rank_corr(x, y, n_boot: int, seed: int) -> dict:
    """Spearman's rho with a percentile bootstrap 95% interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "lo": None, "hi": None, "n": len(x)}
    rho = spearmanr(x, y).statistic
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            boots.append(spearmanr(x[idx], y[idx]).statistic)
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (None, None)
    return {"rho": float(rho), "lo": float(lo), "hi": float(hi), "n": len(x)}


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower cost, higher accuracy), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def summarise(rows: list[dict], cfg: AnalysisConfig) -> dict:
    bits = sorted({b for r in rows for b in r["top1"]}, reverse=True)
    hi, lo = bits[0], bits[-1]
    drop = [r["top1"][hi] - r["top1"][lo] for r in rows]
    out = {"bits": bits, "drop_from": hi, "drop_to": lo,
           "correlations": {t: rank_corr([r[t] for r in rows], drop, cfg.bootstrap, cfg.seed) for t in TRAITS}}
    edges = np.quantile([r["macs"] for r in rows], np.linspace(0, 1, cfg.bands + 1))
    bands = []
    for b in range(cfg.bands):
        last = b == cfg.bands - 1
        idx = [i for i, r in enumerate(rows) if edges[b] <= r["macs"] and (r["macs"] < edges[b + 1] or last)]
        sub = [rows[i] for i in idx]
        d = [drop[i] for i in idx]
        depth_med = np.median([r["depth"] for r in sub])
        res_med = np.median([r["resolution"] for r in sub])
        shallow_hi = [drop[i] for i in idx if rows[i]["depth"] <= depth_med and rows[i]["resolution"] >= res_med]
        deep_lo = [drop[i] for i in idx if rows[i]["depth"] > depth_med and rows[i]["resolution"] < res_med]
        bands.append({"macs": [float(edges[b]), float(edges[b + 1])], "n": len(idx),
                      "rho_depth": rank_corr([r["depth"] for r in sub], d, cfg.bootstrap, cfg.seed),
                      "rho_resolution": rank_corr([r["resolution"] for r in sub], d, cfg.bootstrap, cfg.seed),
                      "drop_shallow_high_res": float(np.mean(shallow_hi)) if shallow_hi else None,
                      "drop_deep_low_res": float(np.mean(deep_lo)) if deep_lo else None,
                      "n_shallow_high_res": len(shallow_hi), "n_deep_low_res": len(deep_lo)})
    out["bands"] = bands
    out["pairs"] = divergent_pairs(rows, hi, lo)
    out["fronts"] = {b: [rows[i]["arch"] for i in pareto([(r["bitops"][b], r["top1"][b]) for r in rows])]
                     for b in bits}
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


def plot(rows: list[dict], summary: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for b in summary["bits"]:
        pts = [(r["bitops"][b], r["top1"][b]) for r in rows]
        ax.scatter(*zip(*pts), s=10, alpha=0.5, label=f"{b}-bit")
        front = sorted(pts[i] for i in pareto(pts))
        ax.plot(*zip(*front), lw=1.5)
    ax.set_xscale("log")
    ax.set(xlabel="BitOPs", ylabel="val top-1 (%)", title="Sampled subnets and Pareto fronts")
    ax.legend()
    paths.append(_save(fig, out_dir, "analysis_accuracy_vs_bitops.png"))
    hi, lo = summary["drop_from"], summary["drop_to"]
    fig, axes = plt.subplots(1, len(TRAITS), figsize=(3.2 * len(TRAITS), 3), sharey=True)
    drop = [r["top1"][hi] - r["top1"][lo] for r in rows]
    for ax, t in zip(axes, TRAITS):
        ax.scatter([r[t] for r in rows], drop, s=10, alpha=0.6)
        c = summary["correlations"][t]
        ax.set(xlabel=t, title=f"rho={c['rho']:.2f}" if c["rho"] is not None else "rho=n/a")
    axes[0].set_ylabel(f"top-1 lost {hi}->{lo} bits")
    paths.append(_save(fig, out_dir, "analysis_drop_vs_traits.png"))
    return paths


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    checkpoint.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def run_supernets(run_dir: str) -> dict[int, Supernet]:
    """The last trained supernet of each bit-width in a run directory (later stages win)."""
    stages = os.path.join(run_dir, "stages")
    if not os.path.isdir(stages):
        raise ValueError(f"'{run_dir}' is not an oqat run directory (no stages/ folder)")
    found = {}
    for name in sorted(os.listdir(stages), key=lambda n: int(n.split("-")[0]) if n.split("-")[0].isdigit() else -1):
        path = os.path.join(stages, name, "supernet.pt")
        if os.path.isfile(path):
            net, ckpt = files.load_supernet(path)
            found[net.bits] = net, ckpt["data"]
    if len(found) < 2:
        raise ValueError(f"'{run_dir}' has {len(found)} finished supernet(s); the analysis compares at least two bit-widths")
    return found


def analyze(run_dir: str, cfg: AnalysisConfig, out_dir: str | None = None, progress=None) -> dict:
    out_dir = out_dir or os.path.join(run_dir, "analysis")
    nets, data_cfg = {}, None
    for bits, (net, data_cfg) in sorted(run_supernets(run_dir).items(), reverse=True):
        nets[bits] = net
    if data_cfg is None:
        raise ValueError(f"the supernets of '{run_dir}' carry no data config")
    splits = data.load_splits(data_cfg)
    os.makedirs(out_dir, exist_ok=True)
    # Sampled from what the supernets were trained on: an untrained resolution says nothing of quantization.
    trained = next(iter(nets.values())).trained_space
    rows = measure(nets, sample_archs(trained, cfg.samples, cfg.seed), data_cfg, splits, cfg, progress)
    summary = summarise(rows, cfg)
    summary["plots"] = [os.path.basename(p) for p in plot(rows, summary, out_dir)]
    result = {"config": dataclasses.asdict(cfg), "rows": rows, "summary": summary}
    checkpoint.atomic_write(os.path.join(out_dir, "analysis.json"),
                            lambda f: f.write(json.dumps(result, indent=1).encode()))
    checkpoint.atomic_write(os.path.join(out_dir, "analysis.md"), lambda f: f.write(markdown(summary, rows).encode()))
    return result


def _ci(c: dict) -> str:
    return "n/a" if c["rho"] is None else f"{c['rho']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]"


def markdown(s: dict, rows: list[dict]) -> str:
    hi, lo = s["drop_from"], s["drop_to"]
    lines = [f"# Quantization-friendly architectures ({len(rows)} sampled subnets)", "",
             f"Accuracy lost from {hi} to {lo} bits (val top-1 points) against each trait: Spearman's rho "
             "with a bootstrap 95% interval (positive: more of the trait, more lost).", "",
             "| trait | rho [95% CI] |", "|---|---|"]
    lines += [f"| {t} | {_ci(s['correlations'][t])} |" for t in TRAITS]
    lines += ["", "## At matched cost", "",
              "Inside each MACs band: rank correlation of the loss with depth and resolution, and the mean "
              "loss of shallow, high-resolution nets (depth <= band median, resolution >= median) against "
              "deep, low-resolution ones. The paper found the former lose less at 2 bits.", "",
              "| MACs band | n | rho depth | rho resolution | loss shallow+high-res (n) | loss deep+low-res (n) |",
              "|---|---|---|---|---|---|"]
    for b in s["bands"]:
        fmt = lambda v, n: "n/a" if v is None else f"{v:.2f} ({n})"
        lines.append(f"| {b['macs'][0] / 1e6:.2f}-{b['macs'][1] / 1e6:.2f} M | {b['n']} | {_ci(b['rho_depth'])} | "
                     f"{_ci(b['rho_resolution'])} | {fmt(b['drop_shallow_high_res'], b['n_shallow_high_res'])} | "
                     f"{fmt(b['drop_deep_low_res'], b['n_deep_low_res'])} |")
    lines += ["", f"## Similar cost and {hi}-bit accuracy, most different at {lo} bits", ""]
    if not s["pairs"]:
        lines.append("No pair within 10% MACs and 1 point of accuracy among the samples.")
    for p in s["pairs"]:
        lines.append(f"- {p['gap']:.2f} points apart at {lo} bits: `{p['a']}` ({p[f'top1_{hi}bit'][0]:.2f} -> "
                     f"{p[f'top1_{lo}bit'][0]:.2f}) vs `{p['b']}` ({p[f'top1_{hi}bit'][1]:.2f} -> {p[f'top1_{lo}bit'][1]:.2f})")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in s.get("plots", [])]
    return "\n".join(lines) + "\n"
