"""Medians, ratios, targets; ``latest.md``, ``latest.json`` and ``ratios.png``."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chart
from peers import PEERS
from scenarios import Record

Key = tuple[str, str, str]  # workload, step, tool
TOOL_ORDER = ("datamon", "dvc", "restic", "oxen", "obstore-put")
BASE_FIGURES = ("wall_s", "peak_rss_mib", "stored_bytes")
CHART_FIGURES = {"wall_s": "wall time", "peak_rss_mib": "peak RSS", "stored_bytes": "stored bytes"}
EXTRA_FIGURES: dict[str, tuple[str, ...]] = {
    "W1": ("mb_per_s",),
    "W2": ("files_per_s",),
    "W3": ("speedup_vs_first",),
    "W4": ("files_per_s", "lines"),
    "W5": ("mb_per_s",),
    "W6": ("mb_per_s",),
}
# Steps that write nothing: their stored bytes repeat the step before (left out of the chart).
REPEATS_STORED = ("download", "re-upload unchanged")
LABELS = {
    "wall_s": "wall s",
    "peak_rss_mib": "peak RSS MiB",
    "stored_bytes": "stored MiB",
    "mb_per_s": "MB/s (higher is better)",
    "files_per_s": "files/s (higher is better)",
    "speedup_vs_first": "speed-up vs v1 upload (higher is better)",
    "lines": "lines listed",
}


class Medians:
    """The median of every figure over the runs, per (workload, step, tool)."""

    def __init__(self, records: Iterable[Record]) -> None:
        values: dict[Key, dict[str, list[float]]] = {}
        self.order: list[Key] = []
        for r in records:
            key = (r.workload, r.step, r.tool)
            if key not in values:
                values[key] = {}
                self.order.append(key)
            figures: dict[str, float | None] = {
                "wall_s": r.wall_s,
                "peak_rss_mib": r.peak_rss_mib,
                "stored_bytes": None if r.stored_bytes is None else float(r.stored_bytes),
                **r.extra,
            }
            for name, v in figures.items():
                if v is not None:
                    values[key].setdefault(name, []).append(v)
        self.runs = {k: max((len(v) for v in f.values()), default=0) for k, f in values.items()}
        self.samples = values  # every run's figure, in the order of the runs
        self.values = {
            k: {n: statistics.median(v) for n, v in f.items()} for k, f in values.items()
        }

    def get(self, workload: str, step: str, tool: str, figure: str) -> float | None:
        return self.values.get((workload, step, tool), {}).get(figure)

    def each(self, workload: str, step: str, tool: str, figure: str) -> list[float]:
        """The figure of every run, in run order."""
        return self.samples.get((workload, step, tool), {}).get(figure, [])

    def ratio(self, workload: str, step: str, figure: str, peer: str) -> float | None:
        ours = self.get(workload, step, "datamon", figure)
        theirs = self.get(workload, step, peer, figure)
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs

    def workloads(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.order))

    def steps(self, workload: str) -> list[str]:
        return list(dict.fromkeys(k[1] for k in self.order if k[0] == workload))

    def tools(self, workload: str) -> list[str]:
        tools = list(dict.fromkeys(k[2] for k in self.order if k[0] == workload))
        return sorted(tools, key=lambda t: TOOL_ORDER.index(t) if t in TOOL_ORDER else 99)

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"workload": k[0], "step": k[1], "tool": k[2], "runs": self.runs[k], **self.values[k]}
            for k in self.order
        ]


# --- targets (issue 3) -----------------------------------------------------------------------
@dataclass(frozen=True)
class Measure:
    """What a target checks: Datamon's median of ``figure``, or its ratio to ``peer``'s."""

    workload: str
    step: str
    figure: str
    peer: str | None = None

    def value(self, m: Medians) -> float | None:
        if self.peer is None:
            return m.get(self.workload, self.step, "datamon", self.figure)
        return m.ratio(self.workload, self.step, self.figure, self.peer)

    def runs(self, m: Medians) -> str:
        """Every run's figure behind the median, Datamon's (then the peer's): how far from
        its line each run fell."""
        tools = ("datamon",) if self.peer is None else ("datamon", self.peer)
        parts = []
        for tool in tools:
            found = m.each(self.workload, self.step, tool, self.figure)
            if found:
                parts.append(f"{tool} " + ", ".join(fmt(self.figure, v) for v in found))
        return "; ".join(parts)


@dataclass(frozen=True)
class Target:
    text: str
    measure: Measure
    op: str  # "<=" or ">="
    limit: float
    unit: str = "x"

    def check(self, m: Medians) -> dict[str, Any]:
        v = self.measure.value(m)
        if v is None or math.isnan(v):
            status = "n/a"
        elif self.op == "<=":
            status = "PASS" if v <= self.limit else "FAIL"
        else:
            status = "PASS" if v >= self.limit else "FAIL"
        return {"target": self.text, "value": v, "op": self.op, "limit": self.limit,
                "unit": self.unit, "status": status, "runs": self.measure.runs(m)}  # fmt: skip


def _r(workload: str, step: str, figure: str, peer: str) -> Measure:
    return Measure(workload, step, figure, peer)


def _v(workload: str, step: str, figure: str) -> Measure:
    return Measure(workload, step, figure)


TARGETS = (
    Target("W1 upload <= 0.5x DVC add+push", _r("W1", "upload", "wall_s", "dvc"), "<=", 0.5),
    Target("W1 upload <= 0.8x restic backup", _r("W1", "upload", "wall_s", "restic"), "<=", 0.8),
    Target("W1 download <= 0.5x DVC pull", _r("W1", "download", "wall_s", "dvc"), "<=", 0.5),
    Target("W1 download <= 1x restic restore", _r("W1", "download", "wall_s", "restic"), "<=", 1),
    Target("W2 upload <= 0.2x DVC", _r("W2", "upload", "wall_s", "dvc"), "<=", 0.2),
    Target("W2 upload <= 0.8x restic", _r("W2", "upload", "wall_s", "restic"), "<=", 0.8),
    Target("W2 upload >= 20,000 files/s", _v("W2", "upload", "files_per_s"), ">=", 20_000, " f/s"),
    Target("W2 download <= 0.3x DVC", _r("W2", "download", "wall_s", "dvc"), "<=", 0.3),
    Target(
        "W3 bytes added by v2 <= 1.1x restic's",
        _r("W3", "v2 increment", "stored_bytes", "restic"),
        "<=",
        1.1,
    ),
    Target(
        "W3 bytes added by v2 <= 0.2x DVC's",
        _r("W3", "v2 increment", "stored_bytes", "dvc"),
        "<=",
        0.2,
    ),
    Target(
        "Re-upload of an unchanged tree >= 10x faster than the first (W3)",
        _v("W3", "re-upload unchanged", "speedup_vs_first"),
        ">=",
        10,
    ),
    Target("W4 commit <= 2 s", _v("W4", "commit changed files", "wall_s"), "<=", 2, " s"),
    Target("W4 list: first line <= 0.5 s", _v("W4", "list: first line", "wall_s"), "<=", 0.5, " s"),
    Target("W5 upload peak RSS <= 300 MiB", _v("W5", "upload", "peak_rss_mib"), "<=", 300, " MiB"),
    Target(
        "W5 download peak RSS <= 300 MiB", _v("W5", "download", "peak_rss_mib"), "<=", 300, " MiB"
    ),
    Target(
        "W6 W1 upload >= 70% of raw obstore PUT throughput",
        _r("W6", "W1 upload", "mb_per_s", "obstore-put"),
        ">=",
        0.7,
    ),
    Target(
        "W6 W2 upload >= 70% of raw obstore PUT throughput",
        _r("W6", "W2 upload", "mb_per_s", "obstore-put"),
        ">=",
        0.7,
    ),
)


# --- formatting ------------------------------------------------------------------------------
def fmt(figure: str, v: float | None) -> str:
    if v is None:
        return ""
    if figure == "stored_bytes":
        return f"{v / (1 << 20):,.2f}"
    if figure in ("files_per_s", "lines"):
        return f"{v:,.0f}"
    if figure in ("mb_per_s", "peak_rss_mib"):
        return f"{v:,.1f}"
    return f"{v:,.3f}" if v < 10 else f"{v:,.2f}"


def fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def fmt_target_value(t: dict[str, Any]) -> str:
    v = t["value"]
    if v is None:
        return "not measured"
    if t["unit"] == "x":
        return f"{v:.2f}x"
    return f"{v:,.2f}{t['unit']}" if v < 1000 else f"{v:,.0f}{t['unit']}"


def results_table(m: Medians, workload: str) -> list[str]:
    tools = m.tools(workload)
    peers = [t for t in tools if t != "datamon"]
    head = ["step", "figure", *tools, *(f"datamon/{p}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in m.steps(workload):
        for figure in (*BASE_FIGURES, *EXTRA_FIGURES.get(workload, ())):
            cells = [m.get(workload, step, t, figure) for t in tools]
            if all(c is None for c in cells):
                continue
            ratios = [fmt_ratio(m.ratio(workload, step, figure, p)) for p in peers]
            row = [step, LABELS[figure], *(fmt(figure, c) for c in cells), *ratios]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def chart_items(m: Medians) -> list[dict[str, Any]]:
    items = []
    for workload in m.workloads():
        for step in m.steps(workload):
            for peer in m.tools(workload)[1:]:
                for figure, name in CHART_FIGURES.items():
                    if figure == "stored_bytes" and step in REPEATS_STORED:
                        continue
                    r = m.ratio(workload, step, figure, peer)
                    if r is not None and r > 0:
                        label = f"{workload} {step} / {peer}"
                        items.append({"label": label, "figure": name, "ratio": r})
    return items


def draw_chart(items: list[dict[str, Any]], out: Path, title: str) -> str:
    """matplotlib here if it imports, else in bench/.peers/dvc's Python, else a bare PNG."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        python = PEERS / "dvc" / "bin" / "python"
        if python.exists():
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(items, f)
            done = subprocess.run(
                [str(python), str(Path(chart.__file__)), f.name, str(out), title],
                capture_output=True,
                text=True,
                check=False,
            )
            Path(f.name).unlink()
            if done.returncode == 0:
                return done.stdout.strip() + " (bench/.peers/dvc)"
    return chart.render(items, out, title)


def write(
    out_dir: Path,
    meta: dict[str, Any],
    records: list[Record],
    errors: list[dict[str, str]],
    notes: list[str],
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    m = Medians(records)
    targets = [t.check(m) for t in TARGETS]
    items = chart_items(m)
    renderer = draw_chart(items, out_dir / "ratios.png", f"Datamon benchmark ({meta['mode']})")
    meta = {**meta, "chart_renderer": renderer}
    (out_dir / "latest.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "targets": targets,
                "medians": m.to_json(),
                "ratios": items,
                "records": [r.to_json() for r in records],
                "errors": errors,
                "notes": notes,
            },
            indent=2,
        )
        + "\n"
    )
    md = markdown(meta, m, targets, errors, notes)
    path = out_dir / "latest.md"
    path.write_text(md)
    return path


def rewrite(out_dir: Path) -> Path:
    """Write ``latest.md`` (and the verdicts in ``latest.json``) again from the runs that
    ``latest.json`` holds, as this module now reports them; the chart is left as it is.
    Lines that follow the report's title and precede its "Command:" line (a note added by
    hand) are kept."""
    data = json.loads((out_dir / "latest.json").read_text())
    records = [Record(**r) for r in data["records"]]
    m = Medians(records)
    targets = [t.check(m) for t in TARGETS]
    data["targets"] = targets
    (out_dir / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    path = out_dir / "latest.md"
    old = path.read_text().splitlines() if path.exists() else []
    command = [i for i, line in enumerate(old) if line.startswith("Command: ")]
    kept = old[1 : command[0]] if command else []
    md = markdown(data["meta"], m, targets, data["errors"], data["notes"]).splitlines()
    start = next(i for i, line in enumerate(md) if line.startswith("Command: "))
    lines = md[:1] + kept + md[start:] if kept else md
    path.write_text("\n".join(lines) + "\n")
    return path


def probe_table(probes: list[dict[str, Any]]) -> list[str]:
    """The machine's speed at the start, before each workload and at the end (see
    ``measure.speed_probe``): memory copy and in-cache hashing moved 2-3x between hours here,
    and creating a file more than 10-fold. A run from before the file probe, or a probe that
    could not create its files, shows "-" for it."""
    if not probes:
        return []
    return [
        "| speed probe | UTC | memory copy GB/s | BLAKE3 in cache MB/s | file creation µs | load |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p['when']} | {p['utc']} | {p['copy_gbps']:.2f} | {p['hash_mbps']:,.0f} "
            f"| {_create(p)} | {p['load']} |"
            for p in probes
        ),
        "",
    ]


def _create(probe: dict[str, Any]) -> str:
    us = probe.get("create_us")
    return "-" if us is None else f"{us:,.0f}"


def markdown(
    meta: dict[str, Any],
    m: Medians,
    targets: list[dict[str, Any]],
    errors: list[dict[str, str]],
    notes: list[str],
) -> str:
    mach, versions = meta["machine"], meta["versions"]
    ran = m.workloads()
    which = "every workload" if set(meta["workloads"]) <= set(ran) else ", ".join(ran)
    out = [
        f"# Datamon benchmark: {meta['mode']}-scale run of {which}, {meta['date']}",
        "",
        f"Command: `{meta['command']}` — took {meta['elapsed_s']:.0f} s "
        f"(data generation {meta['generate_s']:.0f} s). Medians of {meta['runs']} run(s) "
        "per figure; runs alternate tools (datamon, peer, peer, ..., datamon, ...).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {mach['cpu']} |",
        f"| cores | {mach['cores']} |",
        f"| RAM | {mach['ram']} |",
        f"| kernel | {mach['kernel']} |",
        f"| load average at start | {mach['load_at_start']} |",
        "",
        *probe_table(meta.get("probes", [])),
        "| version | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in versions.items()),
        "",
        "## Workloads",
        "",
        *(f"- **{k}**: {v}" for k, v in meta["workloads"].items() if k in m.workloads()),
        "",
        "## Method",
        "",
        "- Warm page cache: the page cache is not dropped (that needs privileges), so reads "
        "of the workload files are mostly from memory, for every tool alike.",
        "- Every run of every tool starts from a fresh, empty store/repository/remote and "
        "fresh caches; W3 and W4 keep one store across their steps, as a user would.",
        "- W4 commit: Datamon is told the 10 changed paths (`bundle upload --only-from`); "
        "restic, which has no such mode for a whole-tree snapshot, backs the tree up again "
        "(its parent snapshot spares unchanged files). Datamon's re-upload of the same tree "
        "without the list (a scan of every entry) is reported too.",
        "- Datamon's modules are byte-compiled before the runs, as installing a wheel does "
        "(DVC and Oxen come from wheels).",
        "- Every timed command starts after an untimed `sync`, so no command waits for the "
        "write-back of data an earlier step (of any tool) left dirty.",
        "- wall: the command's elapsed time, process start-up included. DVC's upload is "
        "`dvc add` + `dvc push` (times summed, peak RSS the larger); its download is `dvc pull` "
        "into a clean workspace (its `.dvc/config` and `data.dvc` only).",
        "- peak RSS: the kernel's `ru_maxrss` of the command, as `/usr/bin/time -f %M` "
        "reports it (GNU time forks the command from its own small process). It is one "
        "process's: the worker processes of Datamon's uploads of 2,000 small files or more "
        "(W2, W3, W4, W6; about 33 MiB each here) are not added to it.",
        "- stored: apparent bytes (`du -sb`) of the repository or remote after the step: "
        "Datamon's store, DVC's remote (not its local cache), restic's repository, Oxen's "
        "`.oxen` folder, the bucket's object sizes for W6.",
        "- Ratios are Datamon's median over the peer's median: below 1 means Datamon is "
        "faster/smaller, except for rates marked 'higher is better'.",
        *(f"- {n}" for n in notes),
        "",
        "## Targets (issue 3)",
        "",
    ]
    if meta["mode"] != "full":
        out += [
            "Measured on the scaled-down --quick data, so these are indications, not the "
            "issue's verdict (which needs a full run).",
            "",
        ]
    out += [
        "| target | measured | status | each run (Datamon; the peer), as in the tables below |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {t['target']} | {fmt_target_value(t)} | {t['status']} | {t.get('runs', '')} |"
        for t in targets
    ]
    out += ["", "## Results (medians)", ""]
    for workload in m.workloads():
        out += [f"### {workload}", "", *results_table(m, workload), ""]
    out += ["![ratios](ratios.png)", ""]
    if errors:
        out += ["## Errors", ""]
        for e in errors:
            detail = e["error"].strip().replace("\n", " ⏎ ")[:600]
            out.append(f"- {e['workload']} / {e['tool']} (run {e['run']}): {detail}")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Write a results folder's latest.md again from its latest.json."
    )
    parser.add_argument("folder", type=Path, help="a folder holding latest.json")
    print(rewrite(parser.parse_args().folder))
