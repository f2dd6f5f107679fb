"""`python -m oqat.runtime`: build the runtime's library now (set-up does) and print its path,
or one line saying why it cannot be built here."""
import sys

from .build import RuntimeUnavailable, build

try:
    print(build())
except RuntimeUnavailable as err:
    print(f"[setup] oqat runtime not built: {str(err).splitlines()[0]}", file=sys.stderr)
