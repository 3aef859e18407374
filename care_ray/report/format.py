"""Numbers and text as the report prints them: plain strings, never HTML (the templates escape them).

Every formatter takes whatever a table cell holds — a number, None, NaN, a stray string — and prints
"–" for what is not a finite number, so a table with nothing computable still renders. An interval
whose bounds are missing (an analysis written before the tables carried them) prints as the point
estimate alone."""

from __future__ import annotations

import math


def finite(value: object) -> float | None:
    """A finite float, or None for null/NaN/inf/non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]  # anything float() takes: numbers, numeric strings
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def num(value: object, digits: int = 2) -> str:
    f = finite(value)
    return "–" if f is None else f"{f:.{digits}f}"


def integer(value: object) -> str:
    f = finite(value)
    return "–" if f is None else f"{int(round(f)):,}"


def ci(lo: object, hi: object, digits: int = 2) -> str:
    """ "[lo, hi]", or "" when a bound is missing."""
    if finite(lo) is None or finite(hi) is None:
        return ""
    return f"[{num(lo, digits)}, {num(hi, digits)}]"


def est_ci(est: object, lo: object, hi: object, digits: int = 2) -> str:
    return f"{num(est, digits)} {ci(lo, hi, digits)}".strip()


def pct(value: object, digits: int = 0) -> str:
    f = finite(value)
    return "–" if f is None else f"{100 * f:.{digits}f}%"


def pct_ci(share: object, lo: object, hi: object) -> str:
    if finite(lo) is None or finite(hi) is None:
        return pct(share)
    return f"{pct(share)} [{pct(lo)}, {pct(hi)}]"


def p_text(value: object) -> str:
    """A p value in a sentence: "p = 0.012", "p < 0.001"."""
    f = finite(value)
    if f is None:
        return "p not available"
    return "p < 0.001" if f < 0.001 else f"p = {f:.3f}"


def p_cell(value: object) -> str:
    """A p value in a table cell (the column header says it is p)."""
    f = finite(value)
    return "–" if f is None else ("< 0.001" if f < 0.001 else f"{f:.3f}")


def level(alpha: float) -> str:
    """The confidence level of intervals at 1 − alpha: "95%"."""
    return f"{100 * (1 - alpha):g}%"


def plural(n: int, word: str, plural_form: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural_form or word + 's')}"


def short(text: object, limit: int = 38) -> str:
    """A label cut to fit a plot's axis."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_text(value: object) -> str:
    """A cell as text; a list cell (top terms, quotes) as its items joined by commas."""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)
