// Small SVG charts drawn with DOM calls (no library, no inline style: CSP allows neither).
import { fmt, s } from "./dom.js";

const PALETTE = ["#2f6db5", "#d9822b", "#3a9a5b", "#b4436c", "#7559b3", "#8c6d31", "#1b9aaa"];

export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  // From the last tick at or below lo to the first at or above hi, so the axis covers every
  // value and error bar.
  const ticks = [];
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  for (let k = first; k <= last; k += 1) {
    const t = k * step;
    ticks.push(Math.abs(t) < step * 1e-9 ? 0 : Number(t.toPrecision(12)));
  }
  return ticks;
}

function frame(width, height, label, className) {
  return s("svg", {
    class: "chart " + className, viewBox: `0 0 ${width} ${height}`, width, height,
    role: "img", "aria-label": label, preserveAspectRatio: "xMidYMid meet",
  }, s("title", null, label));
}

function yAxis(svg, scale, ticks, left, right, label) {
  const axis = s("g", { class: "axis y-axis" });
  for (const t of ticks) {
    const y = scale(t);
    axis.append(s("line", { x1: left, x2: right, y1: y, y2: y, class: t === 0 ? "zero" : "gridline" }),
      s("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, fmt(t, 3)));
  }
  if (label) {
    axis.append(s("text", { class: "axis-label", x: 12, y: scale(ticks[ticks.length - 1]) - 6 }, label));
  }
  svg.append(axis);
}

// Bars with 95% error bars: values[i] ± errors[i]. Noisy answers can be negative, so the
// axis always spans zero and both ends of every error bar.
export function barChart({ labels, values, errors, title = "", valueName = "value",
                           width = 640, height = 320 }) {
  const margin = { left: 70, right: 16, top: 26, bottom: 70 };
  const svg = frame(width, height, title || `${valueName} by group`, "bar-chart");
  const errs = values.map((_, i) => (errors && Number.isFinite(errors[i]) ? errors[i] : 0));
  const finite = values.map((v) => (Number.isFinite(v) ? v : 0));
  let lo = Math.min(0, ...finite.map((v, i) => v - errs[i]));
  let hi = Math.max(0, ...finite.map((v, i) => v + errs[i]));
  if (hi === lo) hi = lo + 1;
  const ticks = niceTicks(lo, hi);
  lo = Math.min(lo, ticks[0]);
  hi = Math.max(hi, ticks[ticks.length - 1]);
  const plotH = height - margin.top - margin.bottom;
  const plotW = width - margin.left - margin.right;
  const y = (v) => margin.top + plotH * (1 - (v - lo) / (hi - lo));
  yAxis(svg, y, ticks, margin.left, width - margin.right, valueName);
  if (title) svg.append(s("text", { class: "chart-title", x: width / 2, y: 16, "text-anchor": "middle" }, title));

  const band = plotW / Math.max(1, finite.length);
  const barW = Math.max(2, Math.min(60, band * 0.7));
  const bars = s("g", { class: "bars" });
  const whiskers = s("g", { class: "error-bars" });
  const xlabels = s("g", { class: "axis x-axis" });
  finite.forEach((v, i) => {
    const cx = margin.left + band * (i + 0.5);
    const top = y(Math.max(0, v));
    const bottom = y(Math.min(0, v));
    bars.append(s("rect", {
      class: "bar", x: cx - barW / 2, y: top, width: barW, height: Math.max(1, bottom - top),
      fill: PALETTE[0], "data-label": String(labels[i]), "data-value": String(values[i]),
    }, s("title", null, `${labels[i]}: ${fmt(values[i])}` + (errs[i] ? ` ± ${fmt(errs[i])} (95% CI)` : ""))));
    if (errs[i] > 0) {
      const cap = Math.min(10, barW / 2);
      whiskers.append(s("g", { class: "error-bar", "data-ci95": String(errs[i]) },
        s("line", { x1: cx, x2: cx, y1: y(v - errs[i]), y2: y(v + errs[i]) }),
        s("line", { x1: cx - cap / 2, x2: cx + cap / 2, y1: y(v + errs[i]), y2: y(v + errs[i]) }),
        s("line", { x1: cx - cap / 2, x2: cx + cap / 2, y1: y(v - errs[i]), y2: y(v - errs[i]) })));
    }
    const rotate = finite.length > 6;
    const lx = cx;
    const ly = height - margin.bottom + 14;
    xlabels.append(s("text", {
      x: lx, y: ly, "text-anchor": rotate ? "end" : "middle",
      transform: rotate ? `rotate(-35 ${lx} ${ly})` : null,
    }, String(labels[i]).slice(0, 24)));
  });
  svg.append(bars, whiskers, xlabels);
  return svg;
}

function timeLabel(t, span) {
  const iso = new Date(t).toISOString().replace("T", " ");
  return span < 864e5 ? iso.slice(11, 19) + " UTC" : iso.slice(0, 16);
}

// Cumulative spend over time, one step line per series, with an optional limit line.
// series: [{name, points: [[timeMs, value], ...]}] with points sorted by time.
export function lineChart({ series, title = "", valueName = "", limit = null,
                            width = 640, height = 300 }) {
  const margin = { left: 70, right: 130, top: 26, bottom: 46 };
  const svg = frame(width, height, title || valueName, "line-chart");
  const all = series.flatMap((se) => se.points);
  let t0 = Math.min(...all.map((p) => p[0]));
  let t1 = Math.max(...all.map((p) => p[0]));
  if (!all.length) { t0 = Date.now() - 3600e3; t1 = Date.now(); }
  if (t1 === t0) { t0 -= 60e3; t1 += 60e3; }
  let hi = Math.max(1e-9, ...all.map((p) => p[1]), limit || 0);
  const ticks = niceTicks(0, hi);
  hi = Math.max(hi, ticks[ticks.length - 1]);
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const x = (t) => margin.left + plotW * ((t - t0) / (t1 - t0));
  const y = (v) => margin.top + plotH * (1 - v / hi);
  yAxis(svg, y, ticks, margin.left, width - margin.right, valueName);
  if (title) svg.append(s("text", { class: "chart-title", x: (width - margin.right + margin.left) / 2, y: 16, "text-anchor": "middle" }, title));
  const xaxis = s("g", { class: "axis x-axis" });
  for (const t of [t0, (t0 + t1) / 2, t1]) {
    xaxis.append(s("text", { x: x(t), y: height - margin.bottom + 16, "text-anchor": "middle" },
      timeLabel(t, t1 - t0)));
  }
  svg.append(xaxis);
  if (limit !== null && limit !== undefined && Number.isFinite(limit)) {
    svg.append(s("line", { class: "limit", x1: margin.left, x2: width - margin.right, y1: y(limit), y2: y(limit) }),
      s("text", { class: "limit-label", x: width - margin.right + 4, y: y(limit) + 4 }, `budget ${fmt(limit)}`));
  }
  const legend = s("g", { class: "legend" });
  series.forEach((se, i) => {
    const color = PALETTE[i % PALETTE.length];
    let d = `M ${x(t0)} ${y(0)}`;
    let last = 0;
    for (const [t, v] of se.points) {
      d += ` L ${x(t)} ${y(last)} L ${x(t)} ${y(v)}`;
      last = v;
    }
    d += ` L ${x(t1)} ${y(last)}`;
    svg.append(s("path", { class: "series", d, stroke: color, fill: "none", "data-series": se.name },
      s("title", null, `${se.name}: ${fmt(last)}`)));
    legend.append(s("rect", { x: width - margin.right + 8, y: margin.top + i * 18, width: 10, height: 10, fill: color }),
      s("text", { x: width - margin.right + 24, y: margin.top + 9 + i * 18 }, se.name.slice(0, 16)));
  });
  svg.append(legend);
  return svg;
}
