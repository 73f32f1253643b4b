"""Number formatting shared by the recommendation sentence, report.html and report.md.

One place decides how a quality score, a latency, a memory figure or an interval reads, so the
sentence in the summary and the numbers in the tables never disagree. Missing values read "—".
"""

from __future__ import annotations

DASH = "—"
MINUS = "−"  # U+2212: typographic minus, so "−0.09" does not read as a hyphenated range


def signed(x: float, digits: int = 2) -> str:
    """Fixed decimals with a typographic minus; a value that rounds to zero has no sign."""
    s = f"{x:.{digits}f}"
    if not s.startswith("-"):
        return s
    return s[1:] if float(s) == 0 else MINUS + s[1:]


def quality(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def interval(low: float | None, high: float | None, digits: int = 2) -> str:
    if low is None or high is None:
        return DASH
    return f"{signed(low, digits)}..{signed(high, digits)}"


def ms(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:.1f} ms" if abs(x) < 10 else f"{x:.0f} ms"


def mb(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:.1f} MB" if abs(x) < 10 else f"{x:.0f} MB"


def size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def count(n: float | None) -> str:
    if n is None:
        return DASH
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 10:
        return f"{minutes} min {s:02d} s"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def money(amount: float | None, currency: str) -> str:
    if amount is None:
        return DASH
    digits = 2 if amount >= 0.1 else 4
    return f"{amount:.{digits}f} {currency}"


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.0f}%"


def pvalue(p: float | None) -> str:
    if p is None:
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def ratio(x: float) -> str:
    return f"{x:.1f}×"
