"""Search: NSGA-II over a supernet's architectures (`nsga`; `oqat.search.search` is its entry),
how a candidate is scored (`scoring`), the front and the S/M/L family (`front`), the accuracy
predictor (`predictor`) and the quantization-friendliness analysis (`analysis`)."""
from .nsga import search

__all__ = ["search"]
