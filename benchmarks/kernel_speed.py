"""Speed of the runtime's 1x1 conv kernels against fp32 on MobileNetV3's 1x1 shapes, one thread.

Builds benchmarks/kernel_speed.c with the runtime's kernel files (each ISA file with its own
flags), runs it, adds torch's fp32 matmul at one thread, and prints GMAC/s per shape and kernel
with the CPU's name, then the MAC-weighted total over the shapes and the ratios the runtime aims
at. The kernels include their fused epilogue (u8 codes out, h_swish); fp32 includes bias+h_swish.

    python benchmarks/kernel_speed.py [--tiny] [--bits 2,3,4,8] [--no-torch]
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
    subprocess.run(["cc", *FLAGS, str(ROOT / "benchmarks" / "kernel_speed.c"), *objs, "-lm", "-o", str(exe)], check=True)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="two shapes, very short runs (for the test suite)")
    p.add_argument("--bits", default="2,3,4,8", help="code widths to run (activations and weights alike)")
    p.add_argument("--no-torch", action="store_true", help="leave out torch's fp32 matmul")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        cmd = [str(exe), "--bits", args.bits] + (["--tiny"] if args.tiny else [])
        lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    speed = collections.defaultdict(dict)  # kernel -> shape -> GMAC/s
    for line in lines:
        _, rows, cin, cout, kernel, gmacs = line.split()
        speed[kernel][(int(rows), int(cin), int(cout))] = float(gmacs)
    shapes = list(next(iter(speed.values())))
    if not args.no_torch:
        speed["torch-fp32"] = torch_speed(shapes, args.tiny)
    print(f"CPU: {cpu_name()}; one thread; GMAC/s (higher is better); {os.path.basename(sys.argv[0])} {' '.join(argv or sys.argv[1:])}")
    names = list(speed)
    print("| rows x cin -> cout | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for s in shapes:
        print(f"| {s[0]} x {s[1]} -> {s[2]} | " + " | ".join(f"{speed[n][s]:.0f}" for n in names) + " |")
    macs = {s: s[0] * s[1] * s[2] for s in shapes}
    total = {n: sum(macs.values()) / sum(macs[s] / speed[n][s] for s in shapes) for n in names}
    print("| all (MAC-weighted) | " + " | ".join(f"**{total[n]:.0f}**" for n in names) + " |")
    for isa, fp32 in (("avx2", "fp32-avx2"), ("avx512vnni", "fp32-avx512")):
        if fp32 not in total:
            continue
        ratios = [f"{k.split(':')[1]} {total[k] / total[fp32]:.2f}x" for k in names if k.startswith(isa + ":")]
        if ratios:
            print(f"{isa} vs {fp32}: " + ", ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
