"""What the cache saved a group over a window of days, as figures and a small SVG chart.

The group page draws it on the server (no JavaScript, no front-end build): one bar per
UTC day, pulls served from the cache stacked on pulls fetched upstream, and below them
the upstream bytes the cache saved that day. The SVG carries ``<title>``, ``<desc>``
and an ``aria-label`` with the totals, so it reads without being seen; the page adds a
table of the same days. Every text in it is escaped. It has no ``style`` attribute, which
a strict Content-Security-Policy would block: geometry is in SVG attributes, the bars'
colours in classes (``cached``, ``upstream``, ``saved``) of the pages' style sheet.
Knows nothing of Flask or SQL: the caller passes the days read with
:func:`~.models.usage.read_usage`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

from markupsafe import Markup, escape

from ..models.stats import human_size
from ..models.usage import DayCounts

#: Size of the drawing, in SVG user units (it scales to its container's width).
WIDTH = 640
HEIGHT = 260
_LEFT = 64
_RIGHT = 12
_PULLS_TOP = 28
_PULLS_BOTTOM = 140
_BYTES_TOP = 178
_BYTES_BOTTOM = 228
#: Classes of the bars (the pages' style sheet colours them): pulls served from the cache,
#: pulls fetched upstream, upstream bytes saved.
_CACHED = "cached"
_UPSTREAM = "upstream"
_SAVED = "saved"


@dataclasses.dataclass(frozen=True)
class UsageDayRow:
    """One day of the window, zeros when nothing was counted."""

    day: dt.date
    counts: DayCounts


@dataclasses.dataclass(frozen=True)
class UsageSummary:
    """A window of days and its totals.

    :param days: every day of the window, oldest first.
    """

    days: tuple[UsageDayRow, ...]

    @classmethod
    def build(
        cls, stored: t.Mapping[dt.date, DayCounts], today: dt.date, days: int
    ) -> UsageSummary:
        """The ``days`` UTC days ending with ``today``; days not in ``stored`` count zero."""
        since = today - dt.timedelta(days=days - 1)
        return cls(
            tuple(
                UsageDayRow(day, stored.get(day, DayCounts()))
                for day in (since + dt.timedelta(days=n) for n in range(days))
            )
        )

    @property
    def pulls_cached(self) -> int:
        return sum(row.counts.pulls_cached for row in self.days)

    @property
    def pulls_upstream(self) -> int:
        return sum(row.counts.pulls_upstream for row in self.days)

    @property
    def bytes_saved(self) -> int:
        """Blob bytes served from the cache: what upstream did not have to send."""
        return sum(row.counts.bytes_cached for row in self.days)

    @property
    def bytes_upstream(self) -> int:
        return sum(row.counts.bytes_upstream for row in self.days)

    @property
    def hit_ratio(self) -> float | None:
        """Pulls from the cache over all pulls; ``None`` when there were none."""
        total = self.pulls_cached + self.pulls_upstream
        return self.pulls_cached / total if total else None

    @property
    def hit_ratio_text(self) -> str:
        ratio = self.hit_ratio
        if ratio is None:
            return "no pulls yet"
        return f"{ratio * 100:.1f} %"

    def description(self) -> str:
        """The chart's figures in one sentence (its ``aria-label`` and ``<desc>``)."""
        first, last = self.days[0].day, self.days[-1].day
        return (
            f"From {first:%Y-%m-%d} to {last:%Y-%m-%d}: {self.pulls_cached} pulls served"
            f" from the cache, {self.pulls_upstream} fetched upstream, hit ratio"
            f" {self.hit_ratio_text}; {human_size(self.bytes_saved)} of upstream"
            f" downloads saved, {human_size(self.bytes_upstream)} fetched upstream."
        )

    def svg(self) -> Markup:
        """The chart as an inline ``<svg>`` element."""
        return render_svg(self)


def _nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _nice_max_bytes(value: int) -> int:
    """:func:`_nice_max` in the binary unit of ``value``, so the axis reads ``10.0 GiB``."""
    unit = 1
    while value >= unit * 1024 and unit < 1024**4:
        unit *= 1024
    return _nice_max(-(-value // unit)) * unit


def _count_label(value: int) -> str:
    for size, suffix in ((1_000_000_000_000, "T"), (1_000_000_000, "G"), (1_000_000, "M")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:,}".replace(",", " ") if value >= 10_000 else str(value)


def _text(x: float, y: float, content: str, **attributes: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{escape(v)}"' for name, v in attributes.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(content)}</text>'


def _rect(x: float, y: float, width: float, height: float, kind: str, title: str) -> str:
    return (
        f'<rect x="{x:.2f}" y="{y:.2f}" width="{width:.2f}" height="{height:.2f}"'
        f' class="{kind}"><title>{escape(title)}</title></rect>'
    )


def render_svg(summary: UsageSummary) -> Markup:
    """Draw ``summary``: stacked pull bars, saved-bytes bars, axes with labels, legend."""
    days = summary.days
    slot = (WIDTH - _LEFT - _RIGHT) / max(len(days), 1)
    bar = max(slot * 0.7, 1.0)
    pulls_max = _nice_max(
        max((r.counts.pulls_cached + r.counts.pulls_upstream for r in days), default=0)
    )
    bytes_max = _nice_max_bytes(max((r.counts.bytes_cached for r in days), default=0))
    pulls_height = _PULLS_BOTTOM - _PULLS_TOP
    bytes_height = _BYTES_BOTTOM - _BYTES_TOP
    description = summary.description()
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}"'
        ' class="usage-chart" role="img"'
        ' id="dependency-proxy-usage-chart" aria-labelledby="dependency-proxy-chart-title'
        ' dependency-proxy-chart-desc"'
        f' aria-label="{escape(description)}" font-family="sans-serif" font-size="11">',
        '<title id="dependency-proxy-chart-title">Pulls and upstream bytes saved,'
        f" last {len(days)} days</title>",
        f'<desc id="dependency-proxy-chart-desc">{escape(description)}</desc>',
        # Axes and their labels.
        f'<line x1="{_LEFT}" y1="{_PULLS_BOTTOM}" x2="{WIDTH - _RIGHT}" y2="{_PULLS_BOTTOM}"'
        ' stroke="#555"/>',
        f'<line x1="{_LEFT}" y1="{_PULLS_TOP}" x2="{_LEFT}" y2="{_PULLS_BOTTOM}" stroke="#555"/>',
        f'<line x1="{_LEFT}" y1="{_BYTES_BOTTOM}" x2="{WIDTH - _RIGHT}" y2="{_BYTES_BOTTOM}"'
        ' stroke="#555"/>',
        f'<line x1="{_LEFT}" y1="{_BYTES_TOP}" x2="{_LEFT}" y2="{_BYTES_BOTTOM}" stroke="#555"/>',
        _text(_LEFT - 4, _PULLS_TOP + 4, _count_label(pulls_max), text_anchor="end"),
        _text(_LEFT - 4, _PULLS_BOTTOM, "0", text_anchor="end"),
        _text(8, (_PULLS_TOP + _PULLS_BOTTOM) / 2, "Pulls", font_weight="bold"),
        _text(_LEFT - 4, _BYTES_TOP + 4, human_size(bytes_max), text_anchor="end"),
        _text(_LEFT - 4, _BYTES_BOTTOM, "0", text_anchor="end"),
        _text(8, _BYTES_TOP - 12, "Upstream bytes saved", font_weight="bold"),
        # Legend.
        f'<rect x="{_LEFT}" y="8" width="10" height="10" class="{_CACHED}"/>',
        _text(_LEFT + 14, 17, f"from cache ({summary.pulls_cached})"),
        f'<rect x="{_LEFT + 170}" y="8" width="10" height="10" class="{_UPSTREAM}"/>',
        _text(_LEFT + 184, 17, f"fetched upstream ({summary.pulls_upstream})"),
        _text(WIDTH - _RIGHT, 17, f"hit ratio {summary.hit_ratio_text}", text_anchor="end"),
    ]
    for index, row in enumerate(days):
        counts = row.counts
        x = _LEFT + index * slot + (slot - bar) / 2
        label = f"{row.day:%Y-%m-%d}"
        cached_h = pulls_height * counts.pulls_cached / pulls_max
        upstream_h = pulls_height * counts.pulls_upstream / pulls_max
        if counts.pulls_upstream:
            parts.append(
                _rect(
                    x,
                    _PULLS_BOTTOM - upstream_h,
                    bar,
                    upstream_h,
                    _UPSTREAM,
                    f"{label}: {counts.pulls_upstream} fetched upstream",
                )
            )
        if counts.pulls_cached:
            parts.append(
                _rect(
                    x,
                    _PULLS_BOTTOM - upstream_h - cached_h,
                    bar,
                    cached_h,
                    _CACHED,
                    f"{label}: {counts.pulls_cached} from cache",
                )
            )
        if counts.bytes_cached:
            saved_h = bytes_height * counts.bytes_cached / bytes_max
            parts.append(
                _rect(
                    x,
                    _BYTES_BOTTOM - saved_h,
                    bar,
                    saved_h,
                    _SAVED,
                    f"{label}: {human_size(counts.bytes_cached)} saved",
                )
            )
    # Day axis: the first and last day, and the middle one of a long window.
    ticks = {0, len(days) - 1} | ({len(days) // 2} if len(days) > 2 else set())
    for index in sorted(ticks):
        x = _LEFT + index * slot + slot / 2
        parts.append(_text(x, _BYTES_BOTTOM + 16, f"{days[index].day:%b %d}", text_anchor="middle"))
    parts.append(_text((_LEFT + WIDTH) / 2, HEIGHT - 4, "Day (UTC)", text_anchor="middle"))
    parts.append("</svg>")
    return Markup("".join(parts))
