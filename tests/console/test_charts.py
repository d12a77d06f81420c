"""The SVG chart code in Chromium: negative noisy values, error bars spanning zero, tick
ranges covering every bar, step lines for cumulative spend."""
from __future__ import annotations

import pytest

from tests.console.browser import chromium

pytestmark = pytest.mark.clients

BAR = """async () => {
  const { barChart } = await import("./charts.js");
  const svg = barChart({ labels: ["a", "b", "c"], values: [-5, 20, 0.5], errors: [8, 8, 8],
                         valueName: "n" });
  document.body.append(svg);
  const zero = svg.querySelector("line.zero");
  const rects = [...svg.querySelectorAll("rect.bar")].map((r) => ({
    y: +r.getAttribute("y"), h: +r.getAttribute("height") }));
  const whiskers = [...svg.querySelectorAll("g.error-bar")].map((g) => {
    const l = g.querySelector("line");
    return [+l.getAttribute("y1"), +l.getAttribute("y2")];
  });
  const ticks = [...svg.querySelectorAll(".y-axis line")].map((l) => +l.getAttribute("y1"));
  return { zero: zero ? +zero.getAttribute("y1") : null, rects, whiskers,
           top: Math.min(...ticks), bottom: Math.max(...ticks) };
}"""

LINE = """async () => {
  const { lineChart, niceTicks } = await import("./charts.js");
  const { spendSeries } = await import("./owner.js");
  const { series, key } = spendSeries([
    { analyst: "b", at: "2026-01-01T00:00:00Z", epsilon: 0.5, rho: 0 },
    { analyst: "a", at: "2026-01-01T00:01:00Z", epsilon: 1, rho: 0 },
    { analyst: "b", at: "2026-01-01T00:02:00Z", epsilon: 0.25, rho: 0 },
    { analyst: "a", at: "not a time", epsilon: 9, rho: 0 }], "pure");
  const svg = lineChart({ series, valueName: key });
  return { key, names: series.map((s) => s.name), last: series.map((s) => s.points.at(-1)[1]),
           paths: svg.querySelectorAll("path.series").length,
           ticks: niceTicks(0, 0.75), negative: niceTicks(-13, 27) };
}"""


@pytest.fixture(scope="module")
def page(console_server):
    with chromium() as browser:
        page = browser.new_page()
        page.goto(console_server.console)
        yield page


def test_bar_chart_handles_negative_values_and_error_bars(page):
    out = page.evaluate(BAR)
    zero, (neg, pos, small) = out["zero"], out["rects"]
    assert zero is not None
    assert neg["y"] == pytest.approx(zero)           # a negative bar hangs below zero
    assert pos["y"] + pos["h"] == pytest.approx(zero)  # a positive bar stands on zero
    assert pos["h"] > small["h"] > 0
    for y1, y2 in out["whiskers"]:                   # every whisker inside the axis range
        assert out["top"] - 1e-6 <= min(y1, y2) and max(y1, y2) <= out["bottom"] + 1e-6
    assert len(out["whiskers"]) == 3


def test_spend_series_accumulates_per_analyst(page):
    out = page.evaluate(LINE)
    assert out["key"] == "epsilon"
    assert out["names"] == ["a", "b"]
    assert out["last"] == [1, 0.75]                  # the unparseable time is skipped
    assert out["paths"] == 2
    assert out["ticks"][0] == 0 and out["ticks"][-1] >= 0.75
    assert out["negative"][0] <= -13 and out["negative"][-1] >= 27 and 0 in out["negative"]
