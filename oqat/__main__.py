"""`python -m oqat ...` is `oqat ...`."""
import sys

from .cli import main

sys.exit(main())
