"""Rows of measurements, their summary (median, min, max, ratio), goals, and output:
a Markdown table, a JSON dump and a PNG chart of the ratios."""

from __future__ import annotations

import dataclasses
import json
import statistics
import typing as t
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Goal:
    """A goal from issue 5, checked against a row.

    ``kind``: ``ratio_max``/``ratio_min`` compare median(ours) / median(distribution)
    with ``value``; ``ref_ratio_min`` compares median(ours) / median(reference);
    ``worst_max`` needs every repetition of ours at or below ``value``.
    """

    text: str
    kind: str
    value: float

    def check(self, row: Row) -> bool | None:
        if not row.ours:
            return None
        if self.kind == "worst_max":
            return max(row.ours) <= self.value
        if self.kind == "ref_ratio_min":
            ratio = row.ref_ratio()
            return None if ratio is None else ratio >= self.value
        ratio = row.ratio()
        if ratio is None:
            return None
        if self.kind == "ratio_max":
            return ratio <= self.value
        if self.kind == "ratio_min":
            return ratio >= self.value
        raise ValueError(self.kind)


@dataclasses.dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    ours: list[float] = dataclasses.field(default_factory=list)
    dist: list[float] = dataclasses.field(default_factory=list)
    ref: list[float] = dataclasses.field(default_factory=list)
    ref_label: str = ""
    goal: Goal | None = None
    #: Put in the chart (ratios of counts that distribution makes 0 of are left out).
    chart: bool = True
    note: str = ""
    error: str = ""

    def ratio(self) -> float | None:
        if not self.ours or not self.dist:
            return None
        denominator = statistics.median(self.dist)
        return statistics.median(self.ours) / denominator if denominator else None

    def ref_ratio(self) -> float | None:
        if not self.ours or not self.ref:
            return None
        denominator = statistics.median(self.ref)
        return statistics.median(self.ours) / denominator if denominator else None

    def met(self) -> bool | None:
        return self.goal.check(self) if self.goal else None

    def as_json(self) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data["ratio"] = self.ratio()
        data["ref_ratio"] = self.ref_ratio()
        data["met"] = self.met()
        return data


#: Units whose values are counts: shown without decimals when whole.
COUNT_UNITS = {"requests", "GETs", "token requests"}


def fmt(value: float, unit: str = "") -> str:
    if unit in COUNT_UNITS and value == int(value):
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(values: list[float], unit: str) -> str:
    if not values:
        return "–"
    median = statistics.median(values)
    text = fmt(median, unit)
    low, high = min(values), max(values)
    if len(values) > 1 and low != high:
        text += f" ({fmt(low, unit)}–{fmt(high, unit)})"
    return text


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| scenario | measurement | ours | distribution | ours / distribution | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row.error:
            lines.append(
                f"| {row.scenario} | {row.metric} | error | error | | "
                f"{row.goal.text if row.goal else ''} | {row.error[:120]} |"
            )
            continue
        ratio = row.ratio()
        ratio_text = f"{ratio:.2f}" if ratio is not None else "–"
        dist_text = cell(row.dist, row.unit)
        if row.ref:
            ref_ratio = row.ref_ratio()
            dist_text += f"; {row.ref_label}: {cell(row.ref, row.unit)}"
            if ref_ratio is not None:
                ratio_text += f"; ours / {row.ref_label}: {ref_ratio:.2f}"
        met = row.met()
        met_text = {True: "yes", False: "**no**", None: ""}[met]
        metric = (
            row.metric if not row.unit or row.unit in COUNT_UNITS else f"{row.metric} ({row.unit})"
        )
        lines.append(
            f"| {row.scenario} | {metric} | {cell(row.ours, row.unit)} | {dist_text} | "
            f"{ratio_text} | {row.goal.text if row.goal else ''} | {met_text} |"
        )
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], extra: dict[str, t.Any]) -> None:
    path.write_text(json.dumps({**extra, "rows": [r.as_json() for r in rows]}, indent=2) + "\n")


def chart(path: Path, rows: list[Row], title: str) -> str | None:
    """A horizontal bar chart of ours / distribution (and ours / nginx) per row.

    Returns why no chart was drawn, or ``None``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    bars: list[tuple[str, float, bool | None]] = []
    for row in rows:
        if row.error or not row.chart:
            continue
        if row.ref and row.goal and row.goal.kind == "ref_ratio_min":
            ratio = row.ref_ratio()
            if ratio:
                bars.append((f"{row.scenario}: {row.metric} / {row.ref_label}", ratio, row.met()))
        ratio = row.ratio()
        if ratio:
            met = None if row.goal and row.goal.kind == "ref_ratio_min" else row.met()
            bars.append((f"{row.scenario}: {row.metric}", ratio, met))
    if not bars:
        return "no ratios to draw"
    colors = {True: "#2e7d32", False: "#c62828", None: "#78909c"}
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(12, 0.42 * len(bars) + 1.8))
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(labels, values, color=[colors[b[2]] for b in bars][::-1])
    ax.set_xscale("log")
    ax.set_xlim(min(min(values), 1.0) / 1.5, max(max(values), 1.0) * 1.8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlabel("ours / distribution (or / nginx), log scale")
    ax.set_title(title, fontsize=10)
    ax.legend(
        handles=[
            Patch(color=colors[True], label="goal met"),
            Patch(color=colors[False], label="goal missed"),
            Patch(color=colors[None], label="no goal"),
        ],
        loc="lower right",
        fontsize=8,
    )
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
