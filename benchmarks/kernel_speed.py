"""Speed of the runtime's 1x1 conv and depthwise kernels against fp32 on MobileNetV3's shapes, one thread.

Builds benchmarks/kernel_speed.c with the runtime's kernel files (each ISA file with its own
flags), runs it --repeat times (each run: interleaved rounds, best of), adds torch's fp32 matmul
at one thread for the 1x1 shapes, and prints GMAC/s per shape and kernel (the best over the
runs) with the CPU's name, then the MAC-weighted total over the shapes with its spread over the
runs (min-max), and the ratios the runtime aims at. The kernels include their fused epilogue
(u8 codes out, h_swish; "+t": with thresholds); fp32 includes bias+h_swish. Times are the
thread's CPU time (on a shared machine, others' load on the cores does not count).

    python benchmarks/kernel_speed.py [--tiny] [--bits 2,3,4,8] [--repeat N] [--no-torch]
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "oqat" / "runtime" / "src"
FLAGS = ["-std=gnu11", "-O2", "-ffp-contract=off", "-Wall", "-Wextra"]
ISA_FLAGS = {
    "kernels_ref.c": [],
    "dispatch.c": [],
    "kernels_avx2.c": ["-mavx2", "-mfma"],
    "kernels_avx512.c": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavxvnni"],
}


def build(out_dir: Path) -> Path:
    """The benchmark binary, each file compiled with its own ISA flags."""
    objs = []
    for name, isa in ISA_FLAGS.items():
        obj = out_dir / (name + ".o")
        subprocess.run(["cc", *FLAGS, *isa, "-c", str(SRC / name), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = out_dir / "kernel_speed"
    subprocess.run(["cc", *FLAGS, str(ROOT / "benchmarks" / "kernel_speed.c"), *objs, "-lm", "-o", str(exe)],
                   check=True)
    return exe


def cpu_name() -> str:
    """lscpu's model name, with the family and model numbers (which tell Zen 3 from Zen 5)."""
    info = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    name = info.get("Model name", "unknown CPU")
    return f"{name} (family {info.get('CPU family', '?')}, model {info.get('Model', '?')})"


def torch_speed(shapes, tiny: bool) -> dict:
    """GMAC/s of torch.matmul in fp32 at one thread, per shape (the best of a few runs)."""
    import torch
    torch.set_num_threads(1)
    out = {}
    for rows, cin, cout in shapes:
        a, w = torch.rand(rows, cin), torch.rand(cin, cout)
        reps = 2 if tiny else max(3, int(2e8 / (rows * cin * cout)))
        best = float("inf")
        for _ in range(2 if tiny else 7):
            t = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, w)
            best = min(best, (time.perf_counter() - t) / reps)
        out[(rows, cin, cout)] = rows * cin * cout / best / 1e9
    return out


def parse(lines: list[str]) -> dict:
    """kind ('1x1' or 'dw') -> kernel -> shape -> GMAC/s, from the binary's lines."""
    speed = {"1x1": collections.defaultdict(dict), "dw": collections.defaultdict(dict)}
    for line in lines:
        f = line.split()
        kind, shape = ("1x1", tuple(map(int, f[1:4]))) if f[0] == "shape" else ("dw", tuple(map(int, f[1:6])))
        speed[kind][f[-2]][shape] = float(f[-1])
    return speed


def macs(kind: str, s: tuple) -> int:
    if kind == "1x1":
        return s[0] * s[1] * s[2]
    h, w, c, k, stride = s
    return ((h - 1) // stride + 1) * ((w - 1) // stride + 1) * c * k * k


def total(kind: str, per_shape: dict) -> float:
    """MAC-weighted GMAC/s over the shapes."""
    m = {s: macs(kind, s) for s in per_shape}
    return sum(m.values()) / sum(m[s] / per_shape[s] for s in per_shape)


def label(kind: str, s: tuple) -> str:
    return f"{s[0]} x {s[1]} -> {s[2]}" if kind == "1x1" else f"{s[0]}x{s[1]}x{s[2]} k{s[3]} s{s[4]}"


def table(kind: str, runs: list[dict], extra: dict | None = None) -> None:
    """The best GMAC/s per shape over the runs, the MAC-weighted totals (best, and min-max over
    runs) and the ratios to the fastest fp32 kernel."""
    names = list(runs[0][kind])
    best = {n: {s: max(r[kind][n][s] for r in runs) for s in runs[0][kind][n]} for n in names}
    if extra:
        best.update(extra)
        names += list(extra)
    shapes = list(best[names[0]])
    head = "rows x cin -> cout" if kind == "1x1" else "depthwise h x w x c, k, stride"
    print(f"| {head} | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for s in shapes:
        print(f"| {label(kind, s)} | " + " | ".join(f"{best[n][s]:.1f}" for n in names) + " |")
    tot = {n: total(kind, best[n]) for n in names}
    print("| all (MAC-weighted) | " + " | ".join(f"**{tot[n]:.1f}**" for n in names) + " |")
    if len(runs) > 1:
        spread = {n: [total(kind, r[kind][n]) for r in runs] for n in runs[0][kind]}
        print("| spread over runs | " + " | ".join(f"{min(spread[n]):.0f}-{max(spread[n]):.0f}" if n in spread else ""
                                                    for n in names) + " |")
    fastest = max((n for n in names if n.startswith("fp32")), key=tot.get)
    for isa, own in (("avx2", "fp32-avx2"), ("avx512vnni", "fp32-avx512")):
        if own not in tot:
            continue
        ratios = [f"{k.split(':')[1]} {tot[k] / tot[own]:.2f}x / {tot[k] / tot[fastest]:.2f}x"
                  for k in names if k.startswith(isa + ":")]
        if ratios:
            print(f"{kind} {isa} vs {own} / vs the fastest fp32 ({fastest}): " + ", ".join(ratios))
    print()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true",
                   help="two 1x1 and one depthwise shape, very short runs (for the test suite)")
    p.add_argument("--bits", default="2,3,4,8", help="code widths to run (activations and weights alike)")
    p.add_argument("--repeat", type=int, default=1, help="runs of the whole benchmark (their spread is printed)")
    p.add_argument("--no-torch", action="store_true", help="leave out torch's fp32 matmul")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        cmd = [str(exe), "--bits", args.bits] + (["--tiny"] if args.tiny else [])
        runs = [parse(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines())
                for _ in range(args.repeat)]
    torch = None if args.no_torch else {"torch-fp32": torch_speed(list(next(iter(runs[0]["1x1"].values()))), args.tiny)}
    print(f"CPU: {cpu_name()}; one thread; GMAC/s (higher is better), best of {args.repeat} run(s); "
          f"{os.path.basename(sys.argv[0])} {' '.join(argv or sys.argv[1:])}")
    table("1x1", runs, torch)
    table("dw", runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
