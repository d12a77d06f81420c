// Analyst views: write a query, explain it (cost, accuracy) before running, see the noisy
// answer as a table and a bar chart with 95% error bars; budgets; approval requests.
import { enc, listOf } from "./api.js";
import { barChart } from "./charts.js";
import { add, clear, facts, field, fmt, h, put, select, table } from "./dom.js";

const NUMERIC = new Set(["int", "float"]);

function costText(cost) {
  if (!cost) return "";
  let text = `epsilon ${fmt(cost.epsilon)}, delta ${fmt(cost.delta)}`;
  if (cost.measure === "zcdp" && cost.rho !== undefined) text += `, rho ${fmt(cost.rho)}`;
  return text;
}

function budgetText(b) {
  if (!b) return "";
  return `${fmt(b.remaining_epsilon)} of ${fmt(b.total && b.total.epsilon)} epsilon left` +
    (b.total && b.total.delta ? `, delta ${fmt(b.remaining_delta)} of ${fmt(b.total.delta)}` : "");
}

// The chart for a noisy answer: the first non-noisy column labels the bars, a noisy numeric
// column gives their heights and its ci95 the error bars. A one-row answer charts every noisy
// column side by side.
export function resultChart(result, valueColumn) {
  const cols = result.columns;
  const noisy = cols.map((c, i) => [c, i]).filter(([c]) => c.noisy && NUMERIC.has(c.type));
  if (!noisy.length || !result.rows.length) return null;
  const keyIdx = cols.findIndex((c) => !c.noisy);
  if (keyIdx < 0 && result.rows.length === 1) {
    const row = result.rows[0];
    return barChart({ labels: noisy.map(([c]) => c.name), values: noisy.map(([, i]) => row[i]),
      errors: noisy.map(([c]) => c.ci95), title: "noisy answer with 95% CI", valueName: "value" });
  }
  const [col, idx] = noisy.find(([c]) => c.name === valueColumn) || noisy[0];
  const labels = result.rows.map((r, n) => (keyIdx >= 0 ? fmt(r[keyIdx]) : `row ${n + 1}`));
  return barChart({ labels, values: result.rows.map((r) => r[idx]),
    errors: result.rows.map(() => col.ci95), title: `${col.name} (95% CI ±${fmt(col.ci95)})`,
    valueName: col.name });
}

function renderExplain(out, ex) {
  put(out, h("h3", null, "Explain (nothing spent)"),
    facts([["dataset", ex.dataset], ["cost", costText(ex.cost)], ["mechanism", ex.mechanism],
      ["key release", ex.key_release], ["threshold", ex.threshold ?? undefined],
      ["budget", budgetText(ex.budget)]]),
    table(["column", "type", "noisy", "95% CI ±"],
      ex.columns.map((c) => [c.name, c.type, c.noisy ? "yes" : "no", c.ci95 ?? ""]),
      { className: "grid explain-columns" }),
    (ex.notes || []).map((n) => h("p", { class: "note" }, n)),
    h("details", null, h("summary", null, "Rewritten SQL"), h("pre", { class: "sql" }, ex.rewritten_sql)));
}

function renderResult(out, res) {
  const chartBox = h("div", { class: "chart-box", id: "result-chart" });
  const noisyNumeric = res.columns.filter((c) => c.noisy && NUMERIC.has(c.type)).map((c) => c.name);
  const picker = noisyNumeric.length > 1 && res.columns.some((c) => !c.noisy)
    ? select(noisyNumeric, { id: "chart-column", onchange: (e) => draw(e.target.value) }) : null;
  function draw(name) {
    clear(chartBox);
    const chart = resultChart(res, name);
    if (chart) add(chartBox, chart);
  }
  put(out, h("h3", null, "Answer"),
    facts([["query id", res.query_id], ["dataset", res.dataset], ["cost", costText(res.cost)],
      ["cached", res.cached ? "yes (repeat: nothing spent)" : "no"]]),
    table(res.columns.map((c) => c.noisy ? `${c.name} (±${fmt(c.ci95)})` : c.name), res.rows,
      { className: "grid result-table" }),
    picker ? field("Chart column", picker) : null, chartBox);
  draw(noisyNumeric[0]);
}

async function queryView(ctx, root) {
  const { api } = ctx;
  const datasets = listOf(await api.get("/v1/datasets"), "datasets");
  const sql = h("textarea", { id: "sql", rows: 6, spellcheck: "false",
    placeholder: "SELECT region, COUNT(*) AS n FROM patients GROUP BY region" });
  const epsilon = h("input", { id: "epsilon", type: "number", step: "any", min: "0",
    placeholder: "dataset default" });
  const explainOut = h("div", { id: "explain-out", class: "panel" });
  const resultOut = h("div", { id: "result-out", class: "panel" });
  const err = h("p", { id: "query-error", class: "error", role: "alert", hidden: true });
  const body = () => {
    const b = { sql: sql.value };
    if (epsilon.value !== "") b.epsilon = Number(epsilon.value);
    return b;
  };
  // Run spends budget, so it is enabled only once the exact query text and epsilon about to
  // run have been explained (cost and accuracy shown); any edit asks for a new explain.
  let explained = null;
  const runButton = h("button", { type: "button", id: "run", class: "primary", disabled: true,
    title: "Explain first: see the cost and accuracy before spending budget", onclick: () => run() }, "Run");
  const edited = () => { runButton.disabled = JSON.stringify(body()) !== explained; };
  sql.addEventListener("input", edited);
  epsilon.addEventListener("input", edited);
  async function explain() {
    err.hidden = true;
    try {
      const request = body();
      renderExplain(explainOut, await api.post("/v1/explain", request));
      explained = JSON.stringify(request);
      edited();
      ctx.showStatus("Explained: nothing was spent.");
    } catch (e) { explained = null; edited(); ctx.showError(err, e); }
  }
  async function run() {
    err.hidden = true;
    try {
      const res = await api.post("/v1/query", body());
      renderResult(resultOut, res);
      ctx.showStatus(res.cached ? "Cached answer: nothing spent." : `Spent ${costText(res.cost)}.`);
    } catch (e) { ctx.showError(err, e); }
  }
  add(root, h("h2", null, "Query"),
    h("p", { class: "hint" }, "Every answer is differentially private. Explain shows the cost and ",
      "the 95% confidence interval of each column before you spend anything."),
    datasets.length ? h("p", { class: "hint" }, "Datasets: ",
      datasets.map((d) => `${d.name} (${(d.tables || []).join(", ")})`).join("; ")) : null,
    sql, h("div", { class: "row" }, field("Epsilon", epsilon),
      h("button", { type: "button", id: "explain", onclick: explain }, "Explain"),
      runButton,
      h("button", { type: "button", id: "to-request", class: "link",
        onclick: () => { sessionStorage.setItem("sqlgate.console.draft", sql.value); ctx.go("requests"); } },
      "Ask the owner for an exact answer…")),
    err, explainOut, resultOut);
}

async function budgetsView(ctx, root) {
  const budgets = listOf(await ctx.api.get("/v1/budgets"), "budgets");
  add(root, h("h2", null, "My budgets"),
    budgets.length ? table(["dataset", "measure", "epsilon spent", "epsilon total", "epsilon left",
      "delta spent", "delta total", "queries", "used"],
    budgets.map((b) => [b.dataset, b.measure, b.spent_epsilon, b.total.epsilon, b.remaining_epsilon,
      b.spent_delta, b.total.delta, b.queries,
      h("meter", { min: 0, max: b.total.epsilon || 1, value: Math.min(b.spent_epsilon ?? b.total.epsilon, b.total.epsilon) })]),
    { className: "grid budgets-table", cells: (v) => (v instanceof Node ? v : fmt(v)) })
      : h("p", null, "No dataset was granted to you yet."));
}

function resultTable(data) {
  const cols = data.columns || [];
  return [table(cols, data.rows || [], { className: "grid exact-result" }),
    data.truncated ? h("p", { class: "note" }, "Truncated at the server's row limit.") : null];
}

async function requestsView(ctx, root) {
  const { api } = ctx;
  const datasets = listOf(await api.get("/v1/datasets"), "datasets").map((d) => d.name);
  const form = {
    dataset: select(datasets, { id: "req-dataset" }),
    kind: select([["exact", "exact aggregate"], ["sample", "row sample"]], { id: "req-kind" }),
    sql: h("textarea", { id: "req-sql", rows: 4, spellcheck: "false" }),
    purpose: h("input", { id: "req-purpose", placeholder: "why you need it" }),
    rows: h("input", { id: "req-rows", type: "number", min: 1, value: 100 }),
  };
  form.sql.value = sessionStorage.getItem("sqlgate.console.draft") || "";
  sessionStorage.removeItem("sqlgate.console.draft");
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const listBox = h("div", { id: "request-list" });
  const resultBox = h("div", { id: "request-result", class: "panel" });

  async function refresh() {
    const mine = listOf(await api.get("/v1/requests"), "requests")
      .filter((r) => r.requester === ctx.session.user.name);
    put(listBox, mine.length ? table(
      ["id", "kind", "dataset", "status", "created", "reason", ""],
      mine.map((r) => [r.id, r.kind, r.dataset, r.status, r.created_at, r.reason || "",
        r.result_available ? h("button", { type: "button", class: "fetch", "data-request": r.id,
          onclick: () => fetchResult(r.id) }, "Fetch result (once)") : ""]),
      { className: "grid requests-table", cells: (v) => (v instanceof Node ? v : fmt(v)) })
      : h("p", null, "No requests yet."));
  }
  async function fetchResult(id) {
    err.hidden = true;
    try {
      const data = await api.get(`/v1/requests/${enc(id)}/result`);
      put(resultBox, h("h3", null, `Result of ${id}`),
        h("p", { class: "note" }, "This exact result is released once: save it now."), resultTable(data));
      await refresh();
    } catch (e) { ctx.showError(err, e); }
  }
  async function submit(event) {
    event.preventDefault();
    err.hidden = true;
    const body = { dataset: form.dataset.value, kind: form.kind.value, sql: form.sql.value,
      purpose: form.purpose.value };
    if (body.kind === "sample") body.spec = { rows: Number(form.rows.value) };
    try {
      const created = await api.post("/v1/requests", body);
      ctx.showStatus(`Request ${created.id} filed; the owner will review it.`);
      await refresh();
    } catch (e) { ctx.showError(err, e); }
  }
  add(root, h("h2", null, "Requests to the data owner"),
    h("p", { class: "hint" }, "What DP cannot give (an exact aggregate, a row sample) needs the ",
      "owner's approval. Nothing is released before it."),
    h("form", { id: "request-form", onsubmit: submit },
      h("div", { class: "row" }, field("Dataset", form.dataset), field("Kind", form.kind),
        field("Rows (sample)", form.rows)),
      field("SQL", form.sql), field("Purpose", form.purpose),
      h("button", { type: "submit", id: "req-submit", class: "primary" }, "File request")),
    err, h("h3", null, "My requests"), listBox, resultBox);
  await refresh();
}

function columnRows(table) {
  return Object.entries(table.columns || {}).map(([name, spec]) => {
    const c = typeof spec === "string" ? { type: spec } : spec;
    const bounds = c.lower !== undefined && c.lower !== null ? `[${fmt(c.lower)}, ${fmt(c.upper)}]` : "";
    const keys = c.public_keys ? c.public_keys.map(String).join(", ") : "";
    const role = table.privacy_unit === name ? "privacy unit" : "";
    return [name, c.type, bounds, keys, c.nullable === false ? "no" : "yes", role];
  });
}

export async function datasetsView(ctx, root) {
  const { api } = ctx;
  const datasets = listOf(await api.get("/v1/datasets"), "datasets");
  const detail = h("div", { id: "dataset-detail", class: "panel" });
  const err = h("p", { class: "error", role: "alert", hidden: true });

  async function mock(name, tableName, box) {
    err.hidden = true;
    try {
      const data = await api.get(`/v1/datasets/${enc(name)}/tables/${enc(tableName)}/mock`, { rows: 10 });
      put(box, h("p", { class: "note" }, "Mock rows generated from metadata only (not real data)."),
        table(data.columns, data.rows, { className: "grid mock-table" }));
    } catch (e) { ctx.showError(err, e); }
  }
  async function show(name) {
    err.hidden = true;
    try {
      const d = await api.get(`/v1/datasets/${enc(name)}`);
      put(detail, h("h3", null, d.name || name),
        d.description ? h("p", null, d.description) : null,
        facts([["default budget", d.budget ? `epsilon ${fmt(d.budget.epsilon)}, delta ${fmt(d.budget.delta)}` : undefined],
          ["per query", d.query ? `epsilon ${fmt(d.query.epsilon)}, delta ${fmt(d.query.delta)}, ${d.query.mechanism}` : undefined],
          ["max public cells", d.max_public_cells],
          ["your permissions", (d.permissions || []).join(", ")]]),
        Object.entries(d.tables || {}).map(([tname, t]) => {
          const box = h("div", { class: "mock-box", "data-table": tname });
          return h("section", { class: "table-meta", "data-table": tname },
            h("h4", null, `${d.name || name}.${tname}`),
            facts([["privacy unit", t.privacy_unit || (t.unit_via ? `via ${t.unit_via.column} -> ${t.unit_via.table}` : (t.public ? "public table" : undefined))],
              ["max groups per unit", t.max_groups_per_unit], ["max rows per group", t.max_rows_per_group],
              ["truncate rows per unit", t.truncate_rows_per_unit]]),
            table(["column", "type", "bounds", "public keys", "nullable", ""], columnRows(t),
              { className: "grid schema-table" }),
            h("button", { type: "button", class: "mock", onclick: () => mock(d.name || name, tname, box) },
              "Preview mock data"), box);
        }));
    } catch (e) { ctx.showError(err, e); }
  }
  add(root, h("h2", null, "Datasets"),
    datasets.length ? h("ul", { class: "dataset-list" }, datasets.map((d) => h("li", null,
      h("button", { type: "button", class: "link dataset-link", "data-dataset": d.name,
        onclick: () => show(d.name) }, d.name),
      ` ${d.description || ""} (${(d.tables || []).join(", ")}; ${d.mechanism || ""})`)))
      : h("p", null, "No datasets visible to you."),
    err, detail);
  if (datasets.length) await show(datasets[0].name);
}

export const analystViews = [
  { id: "query", title: "Query", render: queryView },
  { id: "my-budgets", title: "My budgets", render: budgetsView },
  { id: "requests", title: "Requests", render: requestsView },
  { id: "datasets", title: "Datasets", render: datasetsView },
];
