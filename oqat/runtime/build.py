"""Build the runtime's C library with the system C compiler, once, cached by a hash of its
sources and flags (in $OQAT_RT_CACHE, else ~/.cache/oqat/runtime).

Each file that uses an instruction set beyond the base x86-64 is compiled alone with its own
-m flags (the kernels choose among them at run time), so the library runs on any x86-64.
`python -m oqat.runtime` builds it (scripts/setup.sh) and prints its path, or one line saying
why not.
"""
import concurrent.futures
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC, INCLUDE = os.path.join(HERE, "src"), os.path.join(HERE, "include")
LIBRARY = "liboqat_rt.so"
# -ffp-contract=off: no FMA, one rounding per operation, as oqat/quant/requant.py's rule says.
FLAGS = ["-std=c11", "-O3", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wextra"]
STRICT = ["-Werror"]  # what the tests build with
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
AVX2 = ["-mavx2", "-mfma"]
# No -mavxvnni: a CPU with AVX-512 VNNI may lack AVX-VNNI (Ice Lake, Cascade Lake), whose VEX
# encodings the compiler could then emit in a path the dispatcher allows there.
AVX512 = AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
# x86-64 objects beyond the base set: (source, object name, its flags)
X86_OBJECTS = [("kernels_avx2.c", "kernels_avx2", AVX2), ("kernels_avx512.c", "kernels_avx512", AVX512),
               ("fp.c", "fp_avx2", AVX2 + ["-DOQ_FP=oq_fp_avx2"]),
               ("fp.c", "fp_avx512", AVX512 + ["-DOQ_FP=oq_fp_avx512"])]


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot be built here (no C compiler, or it failed)."""


def x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def objects() -> list[tuple[str, str, list[str]]]:
    """(source path, object name, extra flags) of every object of the library."""
    isa_only = {src for src, name, _ in X86_OBJECTS if src[:-2] == name}  # fp.c also has a base build
    base = [f for f in sorted(os.listdir(SRC)) if f.endswith(".c") and f not in isa_only]
    out = [(os.path.join(SRC, f), f[:-2], []) for f in base]
    if x86_64():
        out += [(os.path.join(SRC, src), name, flags) for src, name, flags in X86_OBJECTS]
    return out


def compiler() -> str:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeUnavailable(f"the oqat runtime needs a C compiler: '{cc}' was not found (set CC)")
    return cc


def _digest(parts: list[str], files: list[str]) -> str:
    h = hashlib.sha256("\0".join(parts).encode())
    for path in sorted(files):
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def cache_dir() -> str:
    return os.environ.get("OQAT_RT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "oqat", "runtime")


def _sources() -> list[str]:
    return [os.path.join(d, f) for d in (SRC, INCLUDE) for f in os.listdir(d) if f.endswith((".c", ".h"))]


def build(extra_flags: tuple[str, ...] = (), program: str | None = None) -> str:
    """The path of the library built with `extra_flags` (or, given `program`, a C file with a
    main, of that program linked with the library's objects), built now if not cached. The
    objects of one set of flags are compiled once (in parallel) for the library and every program."""
    cc = compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeUnavailable(f"the C compiler '{cc}' does not run: {err}") from None
    flags = FLAGS + list(extra_flags)
    folder = os.path.join(cache_dir(), _digest([cc, version, platform.machine(), *flags], _sources()))
    objs = _compiled(cc, flags, folder)
    if program:
        out = os.path.join(folder, f"{os.path.basename(program)[:-2]}-{_digest([], [program])}")
        cmd = [cc, *flags, f"-I{INCLUDE}", program, *objs, "-lm", "-o"]
    else:
        out, cmd = os.path.join(folder, LIBRARY), [cc, *flags, "-shared", *objs, "-lm", "-o"]
    if not os.path.exists(out):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            _run(cmd + [os.path.join(tmp, "out")])
            os.replace(os.path.join(tmp, "out"), out)  # atomic: a concurrent build leaves one complete file
    return out


def _compiled(cc: str, flags: list[str], folder: str) -> list[str]:
    """The library's objects in `folder/objects`, compiled there if missing."""
    done = os.path.join(folder, "objects")
    paths = [os.path.join(done, name + ".o") for _, name, _ in objects()]
    if os.path.isdir(done):
        return paths
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder)
    try:
        cmds = [[cc, *flags, *extra, f"-I{INCLUDE}", "-c", src, "-o", os.path.join(tmp, name + ".o")]
                for src, name, extra in objects()]
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(_run, cmds))
        os.rename(tmp, done)  # atomic
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(done):  # else a concurrent build got there first
            raise
    return paths


def _run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeUnavailable(f"building the oqat runtime failed: {' '.join(cmd)}\n{p.stderr.strip()[-2000:]}")

