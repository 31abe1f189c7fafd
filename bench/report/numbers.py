"""How numbers and short texts look in every report format (one place, so all formats agree)."""

from __future__ import annotations

from collections.abc import Mapping

MISSING = "-"
LOWER_BOUND = "≥"
UPPER_BOUND = "≤"
SATURATED_MARK = "†"
NOTE_WIDTH = 80


def fmt_num(value: float | None) -> str:
    """A quantity (rps, MB, seconds) with about three significant digits: 1234, 45.6, 0.05."""
    if value is None:
        return MISSING
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 99.5:
        return f"{value:.0f}"
    if magnitude >= 9.95:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ms(value: float | None) -> str:
    """A latency in milliseconds, always with two decimals."""
    return MISSING if value is None else f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    return MISSING if value is None else f"{fmt_num(value)}×"


def fmt_errors(errors: Mapping[str, int]) -> str:
    """The error count and its kinds, most frequent first: "15 (503×12, disconnect×3)"."""
    total = sum(errors.values())
    if total == 0:
        return "0"
    kinds = sorted(((k, n) for k, n in errors.items() if n), key=lambda kn: (-kn[1], kn[0]))
    return f"{total} (" + ", ".join(f"{k}×{n}" for k, n in kinds) + ")"


def first_line(text: str | None, width: int = NOTE_WIDTH) -> str:
    """The first non-empty line of `text`, cut to `width` characters with an ellipsis."""
    if not text:
        return ""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def fmt_duration(seconds: float) -> str:
    """'1h05m', '12m30s', '40s'."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
