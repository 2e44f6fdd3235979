"""The usage chart of the group page: figures and an SVG that parses, whatever the data."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ElementTree

from flask_dependency_proxy.admin.usage_chart import UsageSummary
from flask_dependency_proxy.models.usage import DayCounts

SVG = "{http://www.w3.org/2000/svg}"
TODAY = dt.date(2026, 12, 6)


def parse(summary: UsageSummary) -> ElementTree.Element:
    root = ElementTree.fromstring(str(summary.svg()))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title") is not None
    return root


def bars(root: ElementTree.Element) -> list[str]:
    """The tooltips of the data bars (legend squares have none)."""
    return [
        title.text or ""
        for rect in root.iter(f"{SVG}rect")
        if (title := rect.find(f"{SVG}title")) is not None
    ]


def texts(root: ElementTree.Element) -> list[str]:
    return [text.text or "" for text in root.iter(f"{SVG}text")]


def test_no_data_is_thirty_empty_days_and_no_pulls_yet() -> None:
    summary = UsageSummary.build({}, TODAY, 30)
    assert len(summary.days) == 30
    assert summary.days[0].day == dt.date(2026, 11, 7) and summary.days[-1].day == TODAY
    assert summary.hit_ratio is None and summary.hit_ratio_text == "no pulls yet"
    root = parse(summary)
    assert bars(root) == []
    assert "hit ratio no pulls yet" in texts(root)
    assert "Pulls" in texts(root) and "Day (UTC)" in texts(root)
    assert "0 pulls served from the cache" in (root.get("aria-label") or "")


def test_one_day() -> None:
    summary = UsageSummary.build({TODAY: DayCounts(3, 1, 3 * 1024 * 1024, 1024)}, TODAY, 1)
    assert (summary.pulls_cached, summary.pulls_upstream) == (3, 1)
    assert (summary.bytes_saved, summary.bytes_upstream) == (3 * 1024 * 1024, 1024)
    assert summary.hit_ratio == 0.75 and summary.hit_ratio_text == "75.0 %"
    root = parse(summary)
    assert bars(root) == [
        "2026-12-06: 1 fetched upstream",
        "2026-12-06: 3 from cache",
        "2026-12-06: 3.0 MiB saved",
    ]
    description = root.find(f"{SVG}desc")
    assert description is not None and description.text == summary.description()
    assert "3.0 MiB of upstream downloads saved" in summary.description()


def test_thirty_days_only_count_the_window() -> None:
    stored = {TODAY - dt.timedelta(days=n): DayCounts(n, 1, n * 10, 5) for n in range(40)}
    summary = UsageSummary.build(stored, TODAY, 30)
    assert summary.pulls_cached == sum(range(30)) and summary.pulls_upstream == 30
    assert summary.bytes_saved == sum(n * 10 for n in range(30))
    root = parse(summary)
    # Day 0 of the window (29 days ago) to today: 30 upstream bars, 29 cached and saved ones.
    assert len(bars(root)) == 30 + 29 + 29
    assert {"Nov 07", "Dec 06"} <= set(texts(root))
    # Bars stay inside the drawing.
    for rect in root.iter(f"{SVG}rect"):
        assert 0 <= float(rect.get("y", "0")) <= 260
        assert float(rect.get("height", "0")) >= 0


def test_huge_numbers_keep_bars_inside_and_labels_short() -> None:
    huge = DayCounts(10**15, 10**12, 2**62, 2**60)
    summary = UsageSummary.build({TODAY: huge}, TODAY, 30)
    root = parse(summary)
    for rect in root.iter(f"{SVG}rect"):
        assert 0 <= float(rect.get("y", "0")) <= 260
        assert 0 <= float(rect.get("height", "0")) <= 260
    assert all(len(text) < 40 for text in texts(root))
    assert summary.hit_ratio_text == "99.9 %"
