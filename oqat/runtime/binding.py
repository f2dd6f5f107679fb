"""The runtime library through ctypes: `Model(path)` runs a .oqrt file on numpy batches."""
import ctypes
import functools
import os
import time

import numpy as np

from . import build

_VISIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_size_t)


class _Memory(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("file_code_bytes", "resident_code_bytes", "resident_float_bytes", "arena_bytes_per_image")]


class _Op(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("type", ctypes.c_char_p), ("input", ctypes.c_int),
                ("residual", ctypes.c_int), ("h", ctypes.c_int), ("w", ctypes.c_int), ("c", ctypes.c_int),
                ("is_codes", ctypes.c_int), ("qn", ctypes.c_int), ("qp", ctypes.c_int), ("step", ctypes.c_float)]


@functools.cache
def library() -> ctypes.CDLL:
    """The runtime library (built on first use; `build.RuntimeUnavailable` where it cannot be)."""
    lib = ctypes.CDLL(build.build())
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
    sigs = {"oqat_rt_load": (p, [ctypes.c_char_p, ctypes.c_char_p]),
            "oqat_rt_load_memory": (p, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]),
            "oqat_rt_free": (None, [p]), "oqat_rt_last_error": (ctypes.c_char_p, []),
            "oqat_rt_input_shape": (None, [p, ctypes.POINTER(i), ctypes.POINTER(i), ctypes.POINTER(i)]),
            "oqat_rt_num_classes": (i, [p]), "oqat_rt_isa": (ctypes.c_char_p, [p]),
            "oqat_rt_default_isa": (ctypes.c_char_p, []),
            "oqat_rt_set_threads": (i, [p, i]), "oqat_rt_threads": (i, [p]),
            "oqat_rt_run": (i, [p, f, i, f]), "oqat_rt_memory_use": (None, [p, ctypes.POINTER(_Memory)]),
            "oqat_rt_num_ops": (i, [p]), "oqat_rt_op_info": (i, [p, i, ctypes.POINTER(_Op)]),
            "oqat_rt_run_trace": (i, [p, f, i, f, _VISIT, p]),
            "oqat_rt_run_timed": (i, [p, f, i, f, ctypes.POINTER(ctypes.c_double)])}
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def default_isa() -> str:
    """The kernel path a model loaded now takes (the best this CPU runs, or OQAT_RT_ISA's)."""
    name = library().oqat_rt_default_isa()
    if name is None:
        raise ValueError(library().oqat_rt_last_error().decode(errors="replace"))
    return name.decode()


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Model:
    """A runtime model loaded from a .oqrt file (`path`) or its bytes (`data`).

    model(x) -> logits: x float32 N x C x H x W (as the network's input); `isa`: the kernel
    path ("scalar", "avx2", "avx512vnni"; None: the best this CPU runs); `threads`: None for
    every CPU this process may use. A damaged file or a bad call is a ValueError with the C
    library's message."""

    def __init__(self, path: str | None = None, threads: int | None = None, isa: str | None = None,
                 data: bytes | None = None):
        self._lib = lib = library()
        enc = isa.encode() if isa else None
        handle = lib.oqat_rt_load(os.fsencode(path), enc) if data is None else lib.oqat_rt_load_memory(data, len(data),
                                                                                                         enc)
        if not handle:
            raise ValueError(self._error())
        self._handle = handle
        c, h, w = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        lib.oqat_rt_input_shape(handle, c, h, w)
        self.input_shape = (c.value, h.value, w.value)
        self.num_classes = lib.oqat_rt_num_classes(handle)
        self.isa = lib.oqat_rt_isa(handle).decode()
        self.threads = threads or default_threads()

    def _error(self) -> str:
        return self._lib.oqat_rt_last_error().decode(errors="replace")

    @property
    def threads(self) -> int:
        return self._lib.oqat_rt_threads(self._handle)

    @threads.setter
    def threads(self, n: int) -> None:
        if self._lib.oqat_rt_set_threads(self._handle, int(n)) != 0:
            raise ValueError(self._error())

    def _input(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 4 or x.shape[1:] != self.input_shape or len(x) == 0:
            raise ValueError(f"input must be float32 N x {' x '.join(map(str, self.input_shape))}, got {x.shape}")
        return x

    @staticmethod
    def _ptr(a: np.ndarray):
        return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def __call__(self, x) -> np.ndarray:
        x = self._input(x)
        out = np.empty((len(x), self.num_classes), np.float32)
        if self._lib.oqat_rt_run(self._handle, self._ptr(x), len(x), self._ptr(out)) != 0:
            raise ValueError(self._error())
        return out

    @property
    def ops(self) -> list[dict]:
        """Each op: name, type, input and residual value ids, output shape (h, w, c), and
        (qn, qp, step) where it writes codes."""
        out = []
        for i in range(self._lib.oqat_rt_num_ops(self._handle)):
            o = _Op()
            self._lib.oqat_rt_op_info(self._handle, i, o)
            out.append({"name": o.name.decode(), "type": o.type.decode(), "input": o.input,
                        "residual": None if o.residual < 0 else o.residual, "shape": (o.h, o.w, o.c),
                        "codes": (o.qn, o.qp, o.step) if o.is_codes else None})
        return out

    def trace(self, x) -> list[np.ndarray]:
        """Every value of a run on x, by value id (0: x; op i writes value i + 1): the codes q
        (int16, N x H x W x C) an op writes for a quantizer, else float32 N x H x W x C."""
        x = self._input(x)
        ops = self.ops
        values = [x] + [np.empty((len(x), *o["shape"]), np.uint8 if o["codes"] else np.float32) for o in ops]

        def visit(_, op, first, n, data, nbytes):
            dst = values[op + 1][first:first + n]
            ctypes.memmove(dst.ctypes.data, data, min(nbytes, dst.nbytes))

        logits = np.empty((len(x), self.num_classes), np.float32)
        if self._lib.oqat_rt_run_trace(self._handle, self._ptr(x), len(x), self._ptr(logits), _VISIT(visit),
                                       None) != 0:
            raise ValueError(self._error())
        return [values[0]] + [v.astype(np.int16) + o["codes"][0] if o["codes"] else v for v, o in zip(values[1:], ops)]

    def op_ms(self, x, rounds: int = 5) -> np.ndarray:
        """Each op's median ms over `rounds` runs on x (after one warm-up run), timed inside the
        library, and the median ms of the whole runs: [op 0, ..., op n-1, whole]."""
        x = self._input(x)
        logits = np.empty((len(x), self.num_classes), np.float32)
        n = self._lib.oqat_rt_num_ops(self._handle)
        runs = []
        for _ in range(rounds + 1):  # the first run warms the caches and is dropped
            seconds = np.zeros(n, np.float64)
            start = time.perf_counter()
            if self._lib.oqat_rt_run_timed(self._handle, self._ptr(x), len(x), self._ptr(logits),
                                           seconds.ctypes.data_as(ctypes.POINTER(ctypes.c_double))) != 0:
                raise ValueError(self._error())
            runs.append(np.append(seconds, time.perf_counter() - start) * 1000.0)
        return np.median(np.stack(runs[1:]), axis=0)

    def profile(self, x, rounds: int = 5) -> list[dict]:
        """Where a run's time goes: each op's name, type and median ms over `rounds` runs on x."""
        ms = self.op_ms(x, rounds)
        return [{"name": o["name"], "type": o["type"], "ms": float(t)} for o, t in zip(self.ops, ms)]

    def memory(self) -> dict[str, int]:
        """Bytes of the weight codes in the file and resident, of the float parts, and of the
        activations per image."""
        m = _Memory()
        self._lib.oqat_rt_memory_use(self._handle, m)
        return {name: getattr(m, name) for name, _ in _Memory._fields_}

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.oqat_rt_free(self._handle)
            self._handle = None

    __del__ = close
