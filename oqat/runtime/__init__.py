"""oqat's own low-bit CPU runtime: a C library that runs an exported network on its integer
codes (`model_file` writes and checks its file; `Model` runs one through ctypes; `build`
compiles the library on first use), and the latency model that prices any architecture of a
space in it (`latency_model`), measured once per machine."""
from .binding import Model
from .build import RuntimeUnavailable
from .model_file import FormatError, read, write

__all__ = ["FormatError", "Model", "RuntimeUnavailable", "read", "write"]
