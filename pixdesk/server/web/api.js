// The daemon's HTTP API as the page uses it. The page never holds the API key: it logs in with the one-time
// code from `pixdesk open` and then rides on the HttpOnly session cookie (credentials: "same-origin").

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0: the daemon could not be reached
    this.code = code;
  }
}

const JSON_HEADERS = { "Content-Type": "application/json", Accept: "application/json, text/event-stream" };

async function call(path, { body, signal, method } = {}) {
  let resp;
  try {
    resp = await fetch(path, {
      method: method || (body === undefined ? "GET" : "POST"),
      headers: JSON_HEADERS,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal,
    });
  } catch (err) {
    if (signal && signal.aborted) throw err;
    const hint = "Could not reach the pixdesk daemon. Is it still running? (`pixdesk status`)";
    throw new ApiError(0, "unreachable", hint);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

async function errorOf(resp) {
  let err = null;
  try {
    err = (await resp.json()).error;
  } catch {
    // not JSON: fall through to the status line
  }
  const message = err && typeof err.message === "string"
    ? err.message
    : `The daemon answered ${resp.status} ${resp.statusText}`;
  return new ApiError(resp.status, (err && err.code) || `http_${resp.status}`, message);
}

/** Trade the one-time login code for the session cookie. */
export async function exchange(code) {
  return (await call("/auth/exchange", { body: { code } })).json();
}

/** {ok, model, demo, loading, progress, phase} for a logged-in page; null when not logged in. */
export async function session() {
  try {
    return await (await call("/auth/session")).json();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return null;
    throw err;
  }
}

/** Store an HTML document for a sandboxed preview frame; returns its URL (served with its own CSP). */
export async function preview(html) {
  return (await (await call("/v1/previews", { body: { html } })).json()).url;
}

/** Stream a chat completion: yields the parsed SSE chunks; an error chunk is thrown as ApiError. */
export async function* chat(body, signal) {
  yield* events(await call("/v1/chat/completions", { body: { ...body, stream: true }, signal }));
}

/** Stream a task (/v1/tasks/NAME): yields task.chunk objects, then the task.result object. */
export async function* task(name, body, signal) {
  const path = `/v1/tasks/${encodeURIComponent(name)}`;
  yield* events(await call(path, { body: { ...body, stream: true }, signal }));
}

async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buf += decoder.decode(value || new Uint8Array(), { stream: !done });
      const parts = buf.split(/\r?\n\r?\n/);
      buf = done ? "" : parts.pop();
      for (const part of parts) {
        const data = part.split(/\r?\n/)
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const obj = JSON.parse(data);
        if (obj && obj.error) {
          throw new ApiError(200, obj.error.code || "error", obj.error.message || "The generation failed");
        }
        yield obj;
      }
      if (done) {
        throw new ApiError(200, "incomplete", "The answer stream ended early (the daemon may have stopped).");
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
