// Owner views: datasets, the approval queue (query text, dry run on mock data, approve/deny),
// budgets per analyst with spend over time, and the audit log with filters.
import { enc, listOf } from "./api.js";
import { lineChart } from "./charts.js";
import { add, clear, facts, field, fmt, h, put, select, table } from "./dom.js";
import { datasetsView } from "./analyst.js";

function ownedDatasets(ctx) {
  return ctx.session.owned.length ? ctx.session.owned : ctx.session.queryable;
}

async function approvalsView(ctx, root) {
  const { api } = ctx;
  const owned = new Set(ownedDatasets(ctx).map((d) => d.toLowerCase()));
  const isAdmin = ctx.session.user.role === "admin";
  const queue = h("div", { id: "approval-queue" });
  const history = h("div", { id: "approval-history" });

  function card(r) {
    const err = h("p", { class: "error", role: "alert", hidden: true });
    const mockBox = h("div", { class: "mock-run" });
    const reason = h("input", { class: "reason", placeholder: "reason (shown to the analyst)" });
    async function dryRun() {
      err.hidden = true;
      try {
        const res = await api.post(`/v1/requests/${enc(r.id)}/mock-run`, { rows: 200 });
        put(mockBox, h("p", { class: "note" },
          `Dry run on ${fmt(200)} mock rows per table, generated from metadata (no real data).`),
        table(res.columns, res.rows, { className: "grid mock-result" }));
      } catch (e) { ctx.showError(err, e); }
    }
    async function decide(verb) {
      err.hidden = true;
      if (!reason.value.trim()) {
        err.textContent = "Give a reason: the analyst sees it and the audit log keeps it.";
        err.hidden = false;
        return;
      }
      try {
        const done = await api.post(`/v1/requests/${enc(r.id)}/${verb}`, { reason: reason.value.trim() });
        ctx.showStatus(`Request ${r.id} ${done.status}.`);
        await refresh();
      } catch (e) { ctx.showError(err, e); }
    }
    return h("article", { class: "card request", "data-request": r.id },
      h("h3", null, `${r.kind} request ${r.id}`),
      facts([["analyst", r.requester], ["dataset", r.dataset], ["filed", r.created_at],
        ["purpose", r.purpose], ["spec", r.spec ? JSON.stringify(r.spec) : undefined]]),
      h("pre", { class: "sql" }, r.sql),
      h("div", { class: "row" },
        h("button", { type: "button", class: "mock-run-btn", onclick: dryRun }, "Dry-run on mock data"),
        reason,
        h("button", { type: "button", class: "approve primary", onclick: () => decide("approve") }, "Approve"),
        h("button", { type: "button", class: "deny danger", onclick: () => decide("deny") }, "Deny")),
      err, mockBox);
  }

  async function refresh() {
    const all = listOf(await api.get("/v1/requests", { limit: 500 }), "requests")
      .filter((r) => isAdmin || owned.has(r.dataset.toLowerCase()));
    const pending = all.filter((r) => r.status === "pending");
    put(queue, pending.length ? pending.map(card) : h("p", { class: "empty" }, "No pending requests."));
    const decided = all.filter((r) => r.status !== "pending");
    put(history, decided.length ? table(["id", "kind", "dataset", "analyst", "status", "reviewer", "reason", "decided"],
      decided.map((r) => [r.id, r.kind, r.dataset, r.requester, r.status, r.reviewer, r.reason, r.decided_at]),
      { className: "grid history-table" }) : h("p", { class: "empty" }, "Nothing decided yet."));
  }
  add(root, h("h2", null, "Approval queue"),
    h("p", { class: "hint" }, "Analysts ask here for what DP cannot give. Dry-run a request on mock ",
      "data to see what it would return, then approve or deny with a reason."),
    queue, h("h3", null, "Decided"), history);
  await refresh();
}

// Cumulative spend per analyst from the ledger's charges: epsilon for pure-DP datasets, rho
// for zCDP ones (their per-query epsilons do not add up).
export function spendSeries(charges, measure) {
  const key = measure === "zcdp" ? "rho" : "epsilon";
  const byAnalyst = new Map();
  for (const c of charges) {
    const t = Date.parse(c.at);
    if (!Number.isFinite(t)) continue;
    const list = byAnalyst.get(c.analyst) || [];
    const last = list.length ? list[list.length - 1][1] : 0;
    list.push([t, last + (Number(c[key]) || 0)]);
    byAnalyst.set(c.analyst, list);
  }
  return { key, series: [...byAnalyst.entries()].sort().map(([name, points]) => ({ name, points })) };
}

async function ownerBudgetsView(ctx, root) {
  const { api } = ctx;
  const datasets = ownedDatasets(ctx);
  if (!datasets.length) {
    add(root, h("h2", null, "Budgets"), h("p", null, "You own no datasets yet."));
    return;
  }
  const picker = select(datasets, { id: "budget-dataset", onchange: () => show(picker.value) });
  const box = h("div", { id: "budget-box" });
  const chartBox = h("div", { id: "spend-chart", class: "chart-box" });
  const err = h("p", { class: "error", role: "alert", hidden: true });

  async function setBudget(dataset, analyst, eps, delta) {
    err.hidden = true;
    try {
      await api.put(`/v1/datasets/${enc(dataset)}/budgets/${enc(analyst)}`,
        { epsilon: Number(eps), delta: Number(delta || 0) });
      ctx.showStatus(`Budget of ${analyst} on ${dataset} set to epsilon ${eps}.`);
      await show(dataset);
    } catch (e) { ctx.showError(err, e); }
  }
  async function grant(dataset, analyst, on) {
    err.hidden = true;
    try {
      const path = `/v1/users/${enc(analyst)}/grants/${enc(dataset)}/query`;
      await (on ? api.put(path, {}) : api.delete(path));
      ctx.showStatus(on ? `${analyst} may now query ${dataset}.` : `${analyst} may no longer query ${dataset}.`);
      await show(dataset);
    } catch (e) { ctx.showError(err, e); }
  }
  const grantName = h("input", { id: "grant-analyst", placeholder: "analyst user name" });
  const grantForm = h("form", { id: "grant-form", class: "row", onsubmit: (e) => {
    e.preventDefault();
    if (grantName.value.trim()) grant(picker.value, grantName.value.trim(), true);
  } }, field("Give query access to", grantName), h("button", { type: "submit", id: "grant-submit" }, "Grant"));

  async function show(dataset) {
    err.hidden = true;
    const budgets = listOf(await api.get(`/v1/datasets/${enc(dataset)}/budgets`), "budgets");
    const measure = budgets.length ? budgets[0].measure : "pure";
    put(box, budgets.length ? table(
      ["analyst", "measure", "epsilon spent", "epsilon total", "epsilon left", "delta spent",
        "delta total", "queries", "new epsilon", "new delta", "", ""],
      budgets.map((b) => {
        const eps = h("input", { type: "number", step: "any", min: 0, class: "new-epsilon", value: b.total.epsilon });
        const delta = h("input", { type: "number", step: "any", min: 0, class: "new-delta", value: b.total.delta });
        return [b.analyst, b.measure, b.spent_epsilon, b.total.epsilon, b.remaining_epsilon,
          b.spent_delta, b.total.delta, b.queries, eps, delta,
          h("button", { type: "button", class: "set-budget", onclick: () => setBudget(dataset, b.analyst, eps.value, delta.value) }, "Set"),
          b.analyst === ctx.session.user.name ? "" : h("button", { type: "button", class: "revoke link",
            "data-analyst": b.analyst, onclick: () => grant(dataset, b.analyst, false) }, "Revoke access")];
      }), { className: "grid owner-budgets" }) : h("p", null, "No analyst holds a grant on this dataset."));
    clear(chartBox);
    try {
      const spend = await api.get("api/spend", { dataset });
      const { key, series } = spendSeries(spend.charges || [], measure);
      if (series.length) {
        add(chartBox, lineChart({ series, title: `cumulative ${key} spent on ${dataset}`, valueName: key }));
      } else {
        add(chartBox, h("p", { class: "empty" }, "No privacy spent on this dataset yet."));
      }
    } catch (e) { ctx.showError(err, e); }
  }
  add(root, h("h2", null, "Budgets"), field("Dataset", picker), err, box, grantForm,
    h("h3", null, "Spend over time"), chartBox);
  await show(picker.value);
}

async function auditView(ctx, root) {
  const { api } = ctx;
  const f = {
    actor: h("input", { id: "audit-actor", placeholder: "user" }),
    dataset: h("input", { id: "audit-dataset", placeholder: "dataset" }),
    action: h("input", { id: "audit-action", placeholder: "query, explain, request.approve…" }),
    decision: select([["", "any"], "ok", "refused", "error", "approved", "denied"], { id: "audit-decision" }),
    since: h("input", { id: "audit-since", type: "datetime-local" }),
    until: h("input", { id: "audit-until", type: "datetime-local" }),
    limit: h("input", { id: "audit-limit", type: "number", min: 1, max: 10000, value: 200 }),
  };
  const out = h("div", { id: "audit-out" });
  const verifyOut = h("p", { id: "audit-verify-out" });
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const iso = (v) => (v ? new Date(v).toISOString() : undefined);

  let afterSeq = 0;
  const next = h("button", { type: "button", id: "audit-next", hidden: true,
    onclick: () => load(null, afterSeq) }, "Next page");

  // Oldest first, a page at a time (the API pages with after_seq).
  async function load(event, after = 0) {
    if (event) event.preventDefault();
    err.hidden = true;
    try {
      const body = await api.get("/v1/audit", {
        actor: f.actor.value.trim(), dataset: f.dataset.value.trim(), action: f.action.value.trim(),
        decision: f.decision.value, since: iso(f.since.value), until: iso(f.until.value),
        limit: f.limit.value, after_seq: after || undefined,
      });
      const records = listOf(body, "records");
      afterSeq = records.length ? records[records.length - 1].seq : after;
      next.hidden = records.length < Number(f.limit.value || 100);
      // A load counter, so a page (or a test) can tell the filtered answer has arrived.
      out.dataset.loads = String(Number(out.dataset.loads || 0) + 1);
      put(out, h("p", { class: "note" }, `${records.length} record(s) after #${after}, oldest first.`),
        table(["seq", "time", "actor", "role", "channel", "action", "dataset", "decision", "code",
          "epsilon", "rows out", "query"],
        records.map((r) => [r.seq, r.ts, r.actor, r.role, r.channel, r.action, r.dataset, r.decision,
          r.code, r.epsilon, r.rows_out, r.query ? r.query.slice(0, 200) : ""]),
        { className: "grid audit-table" }));
    } catch (e) { ctx.showError(err, e); }
  }
  async function verify() {
    err.hidden = true;
    try {
      const report = await api.get("/v1/audit/verify");
      verifyOut.className = report.ok ? "ok" : "error";
      verifyOut.textContent = report.ok ? `Chain verified: ${fmt(report.records)} records intact.`
        : `Chain BROKEN at record ${report.first_bad_seq}: ${report.reason}`;
    } catch (e) { ctx.showError(err, e); }
  }
  add(root, h("h2", null, "Audit log"),
    h("form", { id: "audit-form", class: "filters", onsubmit: load },
      field("User", f.actor), field("Dataset", f.dataset), field("Action", f.action),
      field("Decision", f.decision), field("Since", f.since), field("Until", f.until),
      field("Limit", f.limit), h("button", { type: "submit", id: "audit-apply" }, "Apply filters")),
    h("div", { class: "row" }, h("button", { type: "button", id: "audit-verify", onclick: verify },
      "Verify hash chain"), verifyOut),
    err, out, next);
  await load();
}

// Formats the server accepts for a table file, from the file name.
function contentTypeOf(file) {
  return /\.(parquet|pq)$/i.test(file.name) ? "application/vnd.apache.parquet" : "text/csv";
}

async function uploadView(ctx, root) {
  const { api } = ctx;
  const metaFile = h("input", { id: "upload-meta-file", type: "file", accept: ".yaml,.yml,.json" });
  const metaText = h("textarea", { id: "upload-meta", rows: 10, spellcheck: "false",
    placeholder: "dataset: visits\nbudget: {epsilon: 5, delta: 1.0e-6}\ntables:\n  visits:\n    privacy_unit: pid\n    columns: ..." });
  const replace = h("input", { id: "upload-replace", type: "checkbox" });
  const err = h("p", { id: "upload-error", class: "error", role: "alert", hidden: true });
  const filesBox = h("div", { id: "upload-files" });
  const done = h("div", { id: "upload-done" });
  metaFile.addEventListener("change", async () => {
    if (metaFile.files[0]) metaText.value = await metaFile.files[0].text();
  });

  async function start(event) {
    event.preventDefault();
    err.hidden = true;
    put(done);
    put(filesBox);   // a new session: the previous one's file pickers go
    try {
      const session = await api.post("/v1/uploads", { metadata: metaText.value, replace: replace.checked });
      const rows = session.tables.map((t) => {
        const input = h("input", { type: "file", class: "table-file", "data-table": t.table, accept: ".csv,.parquet,.pq" });
        const bar = h("progress", { class: "table-progress", "data-table": t.table, max: 1, value: 0 });
        const note = h("span", { class: "table-note" }, "");
        return { table: t.table, input, bar, note };
      });
      const send = h("button", { type: "button", id: "upload-send", class: "primary",
        onclick: () => sendAll(session, rows) }, "Upload files and load");
      put(filesBox, h("h3", null, `Upload ${session.upload_id} for dataset ${session.dataset}`),
        table(["table", "file", "progress", ""], rows.map((r) => [r.table, r.input, r.bar, r.note]),
          { className: "grid upload-table" }), send);
    } catch (e) { ctx.showError(err, e); }
  }

  async function sendAll(session, rows) {
    err.hidden = true;
    try {
      for (const r of rows) {
        const file = r.input.files[0];
        if (!file) throw new Error(`choose a file for table ${r.table}`);
      }
      for (const r of rows) {
        const file = r.input.files[0];
        r.bar.max = file.size || 1;
        await api.upload(`/v1/uploads/${enc(session.upload_id)}/tables/${enc(r.table)}`, file,
          contentTypeOf(file), (loaded, total) => { r.bar.max = total || 1; r.bar.value = loaded; });
        r.bar.value = r.bar.max;
        r.note.textContent = `${fmt(file.size)} bytes received`;
      }
      const loaded = await api.post(`/v1/uploads/${enc(session.upload_id)}/commit`, {});
      put(done, h("p", { class: "ok", id: "upload-loaded" },
        `Dataset ${loaded.name} ${loaded.replaced ? "replaced" : "loaded"}: tables ${Object.keys(loaded.tables || {}).join(", ")}.`));
      await ctx.reloadSession();
      ctx.showStatus(`Dataset ${loaded.name} loaded.`);
    } catch (e) { ctx.showError(err, e); }
  }

  add(root, h("h2", null, "Upload a dataset"),
    h("p", { class: "hint" }, "Metadata YAML first (privacy unit, bounds, key sets, budgets), then one CSV ",
      "or Parquet file per table. All tables load or none; nothing is loaded until every file arrived."),
    h("form", { id: "upload-form", onsubmit: start },
      field("Metadata file", metaFile), field("Metadata (YAML)", metaText),
      h("label", { class: "check" }, replace, " replace an existing dataset I own"),
      h("button", { type: "submit", id: "upload-start" }, "Check metadata and start")),
    err, filesBox, done);
}

export const ownerViews = [
  { id: "datasets", title: "Datasets", render: datasetsView },
  { id: "approvals", title: "Approvals", render: approvalsView },
  { id: "budgets", title: "Budgets", render: ownerBudgetsView },
  { id: "audit", title: "Audit log", render: auditView },
  { id: "upload", title: "Upload", render: uploadView },
];
