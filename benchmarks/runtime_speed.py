"""Speed of oqat's C runtime on a random-weight subnet: ms per batch by kernel path, threads and
batch, beside the PyTorch exact evaluation of the same net (its logits checked equal).

    python benchmarks/runtime_speed.py [--space mbv3] [--arch largest] [--r 224] [--bits 4] [--rounds 20]
    python benchmarks/runtime_speed.py --tiny    # mini at 28 px, batch 1, 1 thread, 1 round: what the suite runs
"""
import argparse
import dataclasses
import os
import random
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_runtime import random_net  # noqa: E402

from oqat.core import machine  # noqa: E402
from oqat.core.machine import median_ms  # noqa: E402
from oqat.runtime import model_file  # noqa: E402
from oqat.runtime.binding import Model  # noqa: E402
from oqat.space.builtin import get_space  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--space", default="mbv3")
    p.add_argument("--arch", default="largest", help="largest, smallest or a seed to sample with")
    p.add_argument("--r", type=int, default=224)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--isas", default="scalar,avx2,avx512vnni")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--tiny", action="store_true", help="mini at 28 px, batch 1, 1 thread, 1 round")
    a = p.parse_args(argv)
    if a.tiny:
        a.space, a.r, a.batches, a.threads, a.rounds = "mini", 28, "1", "1", 1
    sp = dataclasses.replace(get_space(a.space), resolutions=(a.r,))
    arch = getattr(sp, a.arch)() if a.arch in ("largest", "smallest") else sp.sample(random.Random(int(a.arch)))
    torch.set_num_threads(1)
    net = random_net(sp, arch, a.bits)
    path = os.path.join(tempfile.mkdtemp(), "model.oqrt")
    model_file.write(net, path)
    print(f"{arch} at {a.bits} bits on {machine.summary()}")
    for batch in map(int, a.batches.split(",")):
        x = torch.randn(batch, sp.in_channels, a.r, a.r, generator=torch.Generator().manual_seed(0))
        xn = x.numpy()
        with torch.no_grad():
            want = net(x).numpy()
        row = {"torch exact (1 thread)": median_ms(lambda x=x: net(x), max(3, a.rounds // 5), warmup=1)}
        for isa in a.isas.split(","):
            try:
                model = Model(path, isa=isa)
            except ValueError as err:
                print(f"  {isa}: {err}")
                continue
            assert np.array_equal(model(xn), want), isa
            for t in map(int, a.threads.split(",")):
                model.threads = t
                row[f"{isa} {t}t"] = median_ms(lambda m=model, x=xn: m(x), a.rounds, warmup=1)
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()))
    print("memory:", Model(path).memory())


if __name__ == "__main__":
    main()
