"""The pieces of hpo's self-contained HTML pages (hpo data describe, hpo report): sections,
tables with numbers aligned, figures embedded as PNG data, no external URL."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.figure import Figure


def table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], id: str) -> str:
    rows = [[str(c) for c in row] for row in rows]
    # Right-align the columns (but the first, the row names) that hold only numbers: digits line up.
    numeric = [j > 0 and all(is_number(row[j]) for row in rows) for j in range(len(rows[0]))] if rows else []
    align = ['class="n"' if n else "" for n in numeric] or [""] * len(header or ())
    head = "".join(f"<th {a}>{html.escape(h)}</th>" for a, h in zip(align, header or (), strict=False))
    body = "".join("<tr>" + "".join(f"<td {a}>{html.escape(c)}</td>" for a, c in zip(align, row, strict=True))
                   + "</tr>\n" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f'<table id="{id}">{thead}<tbody>\n{body}</tbody></table>'


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "n/a"
    return True


def section(title: str, *body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n" + "\n".join(body) + "\n</section>"


def figure(fig: Figure, alt: str) -> str:
    # A bare Figure, not pyplot: no global state, no display backend, nothing to close.
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # tight: keeps an outside legend
    return f'<img class="figure" alt="{html.escape(alt)}" src="{data_uri(buffer.getvalue())}">'


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
