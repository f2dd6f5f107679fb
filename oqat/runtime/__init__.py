"""oqat's own low-bit CPU runtime: a C library that runs an exported network on its integer
codes (`model_file` writes its file; `Model` runs one through ctypes)."""
from .model_file import FormatError, read, write

__all__ = ["FormatError", "read", "write"]
