"""The `oqat` command line: the options and start-up its commands share (`options`), the
commands by concern (`networks`, `deployment`, `runs`) and the parser (`parser`). `main` is the
console script's entry (`oqat = "oqat.cli:main"`)."""
from .parser import main

__all__ = ["main"]
