"""Bar charts as inline SVG geometry: the templates draw what this computes."""

from __future__ import annotations

from dataclasses import dataclass

from skiplock.insight import Bucket

WIDTH = 600
HEIGHT = 120


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_h: float
    bad_y: float
    bad_h: float
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    bars: list[Bar]
    peak: int
    total_ok: int
    total_failed: int
    first: str
    last: str
    width: int = WIDTH
    height: int = HEIGHT


def chart(title: str, buckets: list[Bucket], fmt: str) -> Chart:
    """Succeeded (and cancelled) stacked under failed, one bar per bucket, scaled to the peak."""
    peak = max((b.succeeded + b.cancelled + b.failed for b in buckets), default=0)
    scale = (HEIGHT - 4) / peak if peak else 0.0
    step = WIDTH / max(1, len(buckets))
    bars = []
    for i, b in enumerate(buckets):
        ok_h = (b.succeeded + b.cancelled) * scale
        bad_h = b.failed * scale
        label = (f"{b.start.strftime(fmt)} UTC: {b.succeeded} succeeded, {b.failed} failed, "
                 f"{b.cancelled} cancelled")
        bars.append(Bar(i * step + 1, max(1.0, step - 2), HEIGHT - ok_h, ok_h, HEIGHT - ok_h - bad_h, bad_h, label))
    return Chart(title, bars, peak, sum(b.succeeded for b in buckets), sum(b.failed for b in buckets),
                 buckets[0].start.strftime(fmt) if buckets else "", buckets[-1].start.strftime(fmt) if buckets else "")
