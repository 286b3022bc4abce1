"""How one value is written in a table cell: markdown (``—`` for a missing value) and CSV
(empty for a missing value, floats at full precision)."""

from __future__ import annotations

import math
from typing import Any, Optional


def paper_text(v: Optional[float]) -> str:
    """A paper number as written in the ablation YAML; ``—`` where the paper has none."""
    return "—" if v is None else str(v)


def csv_cell(v: Any) -> str:
    """A CSV cell: empty for None, ``repr`` of a float (every digit), else ``str``."""
    if v is None:
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)


def md_cell(v: Any, fmt: str) -> str:
    """A markdown cell: ``—`` for None, ``nan``/``inf`` as such, else ``fmt.format(v)``."""
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return fmt.format(v)


def md_escape(s: str) -> str:
    """``s`` with its ``|`` escaped, so that it stays in one markdown table cell."""
    return s.replace("|", "\\|")
