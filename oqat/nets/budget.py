"""The search's budgets: `metric<=limit` constraints on a cost metric (`cost.METRICS`) or on
latency read from a measured table.

They belong to the search (`search.search` takes `Budget` values). They live apart from it
so that a config holds parsed budgets and is checked as it loads without loading the search
and pymoo: `experiment` imports this module, not `search`.
"""
from dataclasses import dataclass

from .cost import METRICS

LATENCY = "latency"  # ms of a run in oqat's runtime: from a latency model (any arch) or a measured table


class BudgetError(ValueError):
    pass


def check_metric(metric: str, latency: bool = True) -> None:
    """`metric` is a cost metric, or latency where a latency model or table gives it (`latency`)."""
    valid = METRICS + ((LATENCY,) if latency else ())
    if metric not in valid:
        hint = "" if latency else f" ({LATENCY} needs a latency model: search.latency_model, --latency-model)"
        raise BudgetError(f"unknown budget metric {metric!r}; valid: {', '.join(valid)}{hint}")


@dataclass(frozen=True)
class Budget:
    metric: str  # one of cost.METRICS, or "latency" with a latency table
    limit: float  # the largest allowed value

    def __str__(self) -> str:
        short = f"{self.limit:g}"  # a config dumps this text: exact where the short form would round
        return f"{self.metric}<={short if float(short) == self.limit else repr(self.limit)}"

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """`metric<=value`, e.g. `bitops<=2e8`: the form a config and `--budget` write (and `str` gives)."""
        metric, sep, value = text.replace(" ", "").partition("<=")
        if not sep:
            raise BudgetError(f"budget {text!r} must look like METRIC<=VALUE, e.g. bitops<=2e8")
        check_metric(metric)
        try:
            limit = float(value)
        except ValueError:
            raise BudgetError(f"budget {text!r}: {value!r} is not a number") from None
        if not limit > 0:
            raise BudgetError(f"budget {text!r}: the limit must be a positive number")
        return cls(metric, limit)
