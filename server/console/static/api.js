// The /v1 JSON API with a bearer token. Errors come back as
// {"error": {code, message, sqlstate, hint?, details?}} and are raised as ApiError.
export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `request failed (HTTP ${status})`);
    this.status = status;
    this.code = err.code || "http_" + status;
    this.hint = err.hint || null;
    this.details = err.details || null;
  }
}

export class Api {
  constructor(token, { onUnauthorized } = {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized || (() => {});
  }

  async call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = "Bearer " + this.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", redirect: "error",
    });
    const text = await response.text();
    let parsed = null;
    if (text) {
      try { parsed = JSON.parse(text); } catch (e) { parsed = null; }
    }
    if (!response.ok) {
      const error = new ApiError(response.status, parsed);
      if (response.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return parsed;
  }

  get(path, params) {
    const query = params ? new URLSearchParams(
      Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "")) : null;
    return this.call("GET", query && [...query].length ? `${path}?${query}` : path);
  }
  post(path, body) { return this.call("POST", path, body === undefined ? {} : body); }
  put(path, body) { return this.call("PUT", path, body); }
  delete(path) { return this.call("DELETE", path); }

  // Stream a file as the request body, reporting bytes sent (fetch cannot report upload
  // progress; XMLHttpRequest can, and obeys the same connect-src 'self').
  upload(path, file, contentType, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", path);
      xhr.setRequestHeader("Authorization", "Bearer " + this.token);
      xhr.setRequestHeader("Content-Type", contentType);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size));
      xhr.addEventListener("load", () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else {
          const error = new ApiError(xhr.status, body);
          if (xhr.status === 401) this.onUnauthorized(error);
          reject(error);
        }
      });
      xhr.addEventListener("error", () => reject(new Error("the upload failed (network)")));
      xhr.send(file);
    });
  }
}

export async function signInWithPassword(name, password) {
  const response = await fetch("api/login", {
    method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ name, password }), credentials: "omit", cache: "no-store",
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// A list from an answer that is either a list or {key: list}.
export function listOf(body, key) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body[key])) return body[key];
  return [];
}

export const enc = encodeURIComponent;
