// Building DOM with createElement only (no HTML parsing of strings): every text from the server
// goes through text nodes, so a dataset name or query text can never become markup or script.
const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value" && "value" in el) {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  return append(el, children);
}

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  return append(el, children);
}

// Replace an element's children / append to them; arrays are flattened and null/false
// skipped (the native Element.append would print them as text).
export function put(el, ...children) {
  return append(clear(el), children);
}

export function add(el, ...children) {
  return append(el, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return String(value);
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e9)) return value.toExponential(2);
    return Number(value.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// A table from column names (or {name, ...} objects) and row arrays.
export function table(columns, rows, { caption, className, cells } = {}) {
  const names = columns.map((c) => (typeof c === "string" ? c : c.name));
  return h("table", { class: className || "grid" },
    caption ? h("caption", null, caption) : null,
    h("thead", null, h("tr", null, names.map((n) => h("th", { scope: "col" }, n)))),
    h("tbody", null, rows.map((row, i) => h("tr", null,
      (Array.isArray(row) ? row : names.map((n) => row[n])).map((v, j) =>
        h("td", { class: typeof v === "number" ? "num" : null },
          v instanceof Node ? v : (cells ? cells(v, j, i) : fmt(v))))))));
}

// A two-column key/value table for a flat object.
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("dt", null, k),
      h("dd", null, v instanceof Node ? v : fmt(v))]));
}

export function field(label, input) {
  return h("label", null, label, " ", input);
}

export function select(options, attrs) {
  return h("select", attrs, options.map((o) => {
    const [value, label] = Array.isArray(o) ? o : [o, o];
    return h("option", { value }, label);
  }));
}
