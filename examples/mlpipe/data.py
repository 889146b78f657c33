"""Synthetic raw data for the example: CSV parts with a few broken rows and outliers.

Usage: ``python -m mlpipe.data FOLDER [--rows N] [--seed S]``
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

COLUMNS = ("id", "age", "income", "visits", "score", "label")
PARTS = 3


def make_raw(folder: Path, rows: int = 600, seed: int = 7) -> list[Path]:
    """Write ``part-*.csv`` into ``folder``; returns their paths."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for i in range(rows):
        age = rng.gauss(40, 12)
        income = rng.lognormvariate(10.5, 0.4)
        visits = int(rng.expovariate(1 / 3))
        score = rng.gauss(0, 1)
        signal = 0.06 * (age - 40) + 0.9 * score + 0.4 * math.log(income / 36000) + 0.2 * visits
        label = 1 if signal + rng.gauss(0, 0.7) > 0.6 else 0
        lines.append(f"{i},{age:.1f},{income:.2f},{visits},{score:.4f},{label}")
    # What real exports contain: a missing value, a non-number, a short row, an outlier.
    lines[5] = "5,,41000.00,2,0.1000,0"
    lines[17] = "17,n/a,52000.00,1,0.3000,1"
    lines[42] = "42,33.0,61000.00"
    lines[99] = "99,35.0,9999999.00,3,0.2000,1"
    paths = []
    size = math.ceil(len(lines) / PARTS)
    for p in range(PARTS):
        path = folder / f"part-{p}.csv"
        body = lines[p * size : (p + 1) * size]
        path.write_text(",".join(COLUMNS) + "\n" + "".join(f"{row}\n" for row in body))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for path in make_raw(args.folder, args.rows, args.seed):
        print(path)


if __name__ == "__main__":
    main()
