// Console shell: sign-in, session, navigation. Views live in analyst.js and owner.js.
import { Api, ApiError, signInWithPassword } from "./api.js";
import { clear, h } from "./dom.js";
import { analystViews } from "./analyst.js";
import { ownerViews } from "./owner.js";

const TOKEN_KEY = "sqlgate.console.token";
const $ = (id) => document.getElementById(id);

const shell = {
  session: null,
  api: null,
  views: [],
  current: null,
};

export function showStatus(message, kind = "info") {
  const el = $("status");
  el.textContent = message || "";
  el.className = "status " + kind;
}

export function showError(where, err) {
  const message = err instanceof ApiError
    ? `${err.message}${err.hint ? " (" + err.hint + ")" : ""} [${err.code}]`
    : String(err && err.message ? err.message : err);
  if (where) {
    clear(where).append(message);
    where.hidden = false;
  }
  showStatus(message, "error");
  return message;
}

function viewsFor(session) {
  // Owners and admins get the owner views first; everyone can query what they were granted.
  const views = session.user.role === "analyst" ? [...analystViews] : [...ownerViews, ...analystViews];
  return views.filter((v, i) => views.findIndex((o) => o.id === v.id) === i);
}

async function loadSession(api) {
  const me = await api.get("/v1/me");
  const datasets = me.datasets || {};
  return { user: { name: me.name, role: me.role }, owned: datasets.own || [],
    queryable: datasets.query || [] };
}

function signedOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  shell.session = null;
  shell.api = null;
  $("signin").hidden = false;
  $("view").hidden = true;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("whoami").textContent = "";
  clear($("view"));
  if (message) $("signin-error").textContent = message;
}

async function start(token) {
  const api = new Api(token, { onUnauthorized: () => signedOut("Your session ended; sign in again.") });
  const session = await loadSession(api);
  sessionStorage.setItem(TOKEN_KEY, token);
  shell.api = api;
  shell.session = session;
  shell.views = viewsFor(session);
  $("signin").hidden = true;
  $("signin-error").textContent = "";
  $("view").hidden = false;
  $("signout").hidden = false;
  $("whoami").textContent = `${session.user.name} (${session.user.role})`;
  const nav = clear($("nav"));
  for (const view of shell.views) {
    nav.append(h("button", { type: "button", class: "tab", id: "nav-" + view.id,
      "data-view": view.id, onclick: () => go(view.id) }, view.title));
  }
  nav.hidden = false;
  const wanted = location.hash.slice(1);
  go(shell.views.some((v) => v.id === wanted) ? wanted : shell.views[0].id);
}

async function go(id) {
  const view = shell.views.find((v) => v.id === id);
  if (!view) return;
  shell.current = id;
  history.replaceState(null, "", "#" + id);
  for (const tab of document.querySelectorAll("#nav .tab")) {
    tab.classList.toggle("active", tab.dataset.view === id);
  }
  const root = clear($("view"));
  root.dataset.view = id;
  showStatus("");
  const ctx = { api: shell.api, session: shell.session, go, showStatus, showError,
    // After a change to what the user owns (an upload), later views see the new datasets.
    reloadSession: async () => { shell.session = await loadSession(shell.api); } };
  try {
    await view.render(ctx, root);
  } catch (err) {
    showError(root.appendChild(h("p", { class: "error" })), err);
  }
}

async function onSignIn(event) {
  event.preventDefault();
  const errorEl = $("signin-error");
  errorEl.textContent = "";
  const name = $("signin-name").value.trim();
  const password = $("signin-password").value;
  const token = $("signin-token").value.trim();
  $("signin-submit").disabled = true;
  try {
    if (token) {
      await start(token);
    } else if (name && password) {
      const answer = await signInWithPassword(name, password);
      await start(answer.token);
    } else {
      errorEl.textContent = "Enter a user name and password, or a token.";
      return;
    }
    $("signin-password").value = "";
    $("signin-token").value = "";
  } catch (err) {
    signedOut();
    errorEl.textContent = err instanceof ApiError ? err.message : "Sign-in failed: " + err.message;
  } finally {
    $("signin-submit").disabled = false;
  }
}

async function onSignOut() {
  const api = shell.api;
  signedOut("Signed out.");
  if (api) {
    // Revoke the token server-side so a copy left in this tab's memory is useless.
    try { await api.post("api/logout"); } catch (err) { /* already invalid */ }
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", onSignIn);
  $("signout").addEventListener("click", onSignOut);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) start(saved).catch(() => signedOut());
});
