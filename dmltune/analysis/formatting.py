"""How the analysis's numbers are written for people: costs in sensible units, intervals flagged
when they rest on too few seeds. Shared by report.md, the CLI summary and the notebook."""

from __future__ import annotations

import math

from .selection import FEW_SEEDS, Estimate


def cost(hours) -> str:
    """Hours as h, min or s: three significant digits, in the largest unit that is at least 1."""
    if hours is None or (isinstance(hours, float) and math.isnan(hours)):
        return "–"
    hours = float(hours)
    if math.isinf(hours):
        return "∞"
    if abs(hours) >= 1:
        return f"{hours:.3g} h"
    if abs(hours) * 60 >= 1:
        return f"{hours * 60:.3g} min"
    return f"{hours * 3600:.3g} s"


TIME_UNITS = (("h", 1.0), ("min", 1 / 60), ("s", 1 / 3600))   # (symbol, hours in one unit)


def time_unit(hours) -> tuple[str, float]:
    """One unit for a whole table's times (given in hours): the largest of h, min and s in which
    the largest finite value is at least 1 (s when none is). Returns (symbol, hours per unit)."""
    finite = [abs(float(h)) for h in hours if h is not None and math.isfinite(float(h)) and float(h) != 0]
    top = max(finite, default=0.0)
    for symbol, size in TIME_UNITS:
        if top >= size:
            return symbol, size
    return TIME_UNITS[-1]


def in_unit(hours, unit: tuple[str, float]) -> str:
    """Hours as a plain number in ``unit`` (from :func:`time_unit`), three significant digits; the
    unit goes in the column's header."""
    if hours is None or (isinstance(hours, float) and math.isnan(hours)):
        return "–"
    if math.isinf(float(hours)):
        return "∞"
    return f"{float(hours) / unit[1]:.3g}"


def time_name(cost_unit: str) -> str:
    """What a study's costs measure, for a header: "GPU time", or "wall time" when no trial used a GPU."""
    return "GPU time" if cost_unit == "GPU-hours" else "wall time"


def number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "∞" if isinstance(value, float) and math.isinf(value) and value > 0 else "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def count(value, digits: int = 2) -> str:
    """An expected count (trials, seeds): '–' for NaN, '∞' for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}" if digits else f"{value:.0f}"


def bracket(low, high, fmt=count) -> str:
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"


def few_seeds_mark(n) -> str:
    """'†' when an interval rests on fewer than FEW_SEEDS seeds (see :data:`FEW_SEEDS_FOOTNOTE`)."""
    try:
        return "†" if 0 < float(n) < FEW_SEEDS else ""
    except (TypeError, ValueError):
        return ""


FEW_SEEDS_FOOTNOTE = (f"† Interval from fewer than {FEW_SEEDS} seeds (n < {FEW_SEEDS}): unreliable. Student t with so "
                      "few degrees of freedom is very wide, and the seed variance itself is barely estimated. "
                      "Run more seeds.")

__all__ = ["FEW_SEEDS_FOOTNOTE", "bracket", "cost", "count", "few_seeds_mark", "in_unit", "number", "time_name",
           "time_unit"]


# ---------------------------------------------------------------- report.md


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def interval_text(mean, half, n=None, digits=4) -> str:
    return Estimate(mean, half, n if n is not None else (2 if math.isfinite(half) else 1)).text(digits)


def gap_text(r: dict) -> str:
    if not math.isfinite(r.get("gap", math.nan)):
        return "–"
    lo = "−∞" if not math.isfinite(r["gap_lower"]) else f"{r['gap_lower']:+.4f}"
    hi = "+∞" if not math.isfinite(r["gap_upper"]) else f"{r['gap_upper']:+.4f}"
    return f"{r['gap']:+.4f} [{lo}, {hi}]{few_seeds_mark(r.get('seeds'))}"


def seeds_needed_text(r: dict) -> str:
    if r["verdict"] != "inconclusive":
        return "–"
    value = r.get("seeds_needed", math.nan)
    if isinstance(value, float) and math.isinf(value):
        return "more than 10,000"
    return count(value, 0)
