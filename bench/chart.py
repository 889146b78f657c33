"""The ratio chart: Datamon / peer for each step and figure, log scale, 1x marked.

    python chart.py RATIOS.json OUT.png

Uses matplotlib when it imports (bench/setup.sh puts it in bench/.peers/dvc), otherwise
:func:`fallback_png` draws the same bars without text, with nothing but the standard library.
RATIOS.json is a list of ``{"label": str, "figure": str, "ratio": float}``.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

FIGURES = ("wall time", "peak RSS", "stored bytes")
LOW, HIGH = 0.01, 100.0  # the x axis: 1/100x .. 100x


def render(items: list[dict[str, Any]], out: Path, title: str) -> str:
    """Draw with matplotlib if possible; returns which renderer was used."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        fallback_png(items, out)
        return "fallback"
    labels = list(dict.fromkeys(i["label"] for i in items))
    height = max(3.0, 0.28 * len(labels) + 1.5)
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(15, height), sharey=True)
    for ax, figure in zip(axes, FIGURES, strict=True):
        values = {i["label"]: i["ratio"] for i in items if i["figure"] == figure}
        ys = list(range(len(labels)))
        xs = [values.get(label, math.nan) for label in labels]
        colors = ["#2a9d8f" if (x == x and x <= 1) else "#e76f51" for x in xs]
        clipped = [min(max(x, LOW), HIGH) if x == x else 1.0 for x in xs]
        # Bars grow from the 1x line: left for "Datamon better", right for "worse".
        ax.barh(ys, [c - 1.0 for c in clipped], left=1.0, color=colors)
        for y, x in zip(ys, xs, strict=True):
            if x == x:
                end = min(max(x, LOW), HIGH)
                # The value sits just beyond the bar's end, away from the 1x line.
                pos, align = (end * 1.1, "left") if x >= 1 else (end / 1.1, "right")
                ax.text(pos, y, f"{x:.2g}x", va="center", ha=align, fontsize=7)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(LOW, HIGH)
        ax.set_title(f"{figure}: Datamon / peer")
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
    fig.suptitle(f"{title} (below 1x: Datamon is better)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return "matplotlib"


def _png(width: int, height: int, rows: list[bytearray]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def fallback_png(items: list[dict[str, Any]], out: Path) -> None:
    """One panel per figure, one bar per label, log x from 1/100x to 100x, black line at 1x."""
    labels = list(dict.fromkeys(i["label"] for i in items))
    panel_w, bar_h, gap = 300, 10, 4
    width = panel_w * len(FIGURES) + 20 * (len(FIGURES) + 1)
    height = max(1, len(labels)) * (bar_h + gap) + 20
    rows = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]

    def fill(x0: int, x1: int, y0: int, y1: int, rgb: tuple[int, int, int]) -> None:
        for y in range(max(0, y0), min(height, y1)):
            for x in range(max(0, x0), min(width, x1)):
                rows[y][3 * x : 3 * x + 3] = bytes(rgb)

    span = math.log(HIGH) - math.log(LOW)
    for p, figure in enumerate(FIGURES):
        left = 20 + p * (panel_w + 20)
        one = left + int(panel_w * (0 - math.log(LOW)) / span)
        values = {i["label"]: i["ratio"] for i in items if i["figure"] == figure}
        for row, label in enumerate(labels):
            ratio = values.get(label)
            if ratio is None or ratio != ratio or ratio <= 0:
                continue
            pos = left + int(
                panel_w * (math.log(min(max(ratio, LOW), HIGH)) - math.log(LOW)) / span
            )
            y = 10 + row * (bar_h + gap)
            color = (42, 157, 143) if ratio <= 1 else (231, 111, 81)
            fill(min(one, pos), max(one, pos) + 1, y, y + bar_h, color)
        fill(one, one + 1, 0, height, (0, 0, 0))
        fill(left, left + panel_w, height - 2, height - 1, (128, 128, 128))
    out.write_bytes(_png(width, height, rows))


def main(argv: list[str]) -> int:
    items = json.loads(Path(argv[0]).read_text())
    title = argv[2] if len(argv) > 2 else "Datamon benchmark"
    print(render(items, Path(argv[1]), title))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
