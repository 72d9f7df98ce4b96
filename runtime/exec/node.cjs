// at-run-exec for Node.js: the Node runtime shim of at-rund, bundle ABI v1 (docs/bundle-abi.md,
// docs/runtimes.md). The same wire contract as the Deno shim (runtime/exec/main.ts): `go` on stdin,
// the ready line, HTTP/1.1 on a Unix socket, `/e/<endpoint>` calls and `/t/<task>` runs.
//
// Owns: loading one ES module bundle, serving its endpoints and tasks, mapping input and results,
// and reporting failures in a structured way. Must not: relay stack traces or raw load errors to
// callers, nor widen what the bundle may do (Node's permission flags, Landlock and the container
// decide that).
//
// CommonJS with require() of built-ins on purpose: an ES module importing node:http starts ~30 ms
// slower on Node 24. The web classes (Response, Headers, Request) load undici on first use
// (+30-45 ms), so the shim writes its own answers with res.writeHead and builds a Request only
// when a handler reads ctx.request (../shared/reference/runtimes.md §2.5).
//
// Usage: node <flags> node.cjs <bundle file> <socket path>, then `go\n` on stdin.
"use strict";

const http = require("node:http");
const fs = require("node:fs");

/**
 * The runner's egress proxy (HTTP_PROXY/HTTPS_PROXY) for fetch and node:http(s), set up on first
 * use: http.setGlobalProxyFromEnv() loads undici, ~30 ms that a bundle which never calls out
 * should not pay at every start (--use-env-proxy does it eagerly). Without it a request goes
 * nowhere: the kernel layer lets the instance reach the proxy only.
 */
let proxied = false;
function ensureProxy() {
  if (proxied) return;
  proxied = true;
  if (process.env.HTTP_PROXY || process.env.HTTPS_PROXY) http.setGlobalProxyFromEnv();
}

function proxyOnFirstUse() {
  const fetchDesc = Object.getOwnPropertyDescriptor(globalThis, "fetch");
  if (fetchDesc && fetchDesc.get) {
    Object.defineProperty(globalThis, "fetch", {
      configurable: true,
      enumerable: fetchDesc.enumerable,
      get() {
        ensureProxy();
        return fetchDesc.get.call(this);
      },
      set: fetchDesc.set,
    });
  } else if (typeof globalThis.fetch === "function") {
    const real = globalThis.fetch;
    globalThis.fetch = function fetch(...a) {
      ensureProxy();
      return real.apply(this, a);
    };
  }
  for (const mod of [http, require("node:https")]) {
    for (const name of ["request", "get"]) {
      const real = mod[name];
      mod[name] = function (...a) {
        ensureProxy();
        return real.apply(this, a);
      };
    }
  }
  // ES module imports of node:http(s) see the wrapped functions too.
  require("node:module").syncBuiltinESMExports();
}

const ABI_VERSION = 1;
const CALL_PREFIX = "/e/";
const TASK_PREFIX = "/t/";
const ERROR_HEADER = "x-atrund-error";
const RESERVED_PREFIX = "x-atrund-";
const TASK_TAG = "dev.atrund.task";
const RUNNER_URL = "http://runner.atrund.internal";

function signal(obj) {
  const line = JSON.stringify({ atrund: obj.event, ...obj, event: undefined });
  fs.writeSync(1, line + "\n");
}

function errorName(e) {
  const n = e !== null && typeof e === "object" || typeof e === "function" ? e.name : undefined;
  return typeof n === "string" && /^[A-Za-z]{1,40}$/.test(n) ? n : "Error";
}

/** A shim-made answer: status, headers, body (string or Buffer). */
function plain(status, headers, body) {
  return { status, headers, body };
}

function json(status, value, extra) {
  return plain(status, { "content-type": "application/json", ...extra }, JSON.stringify(value));
}

function fail(status, error, message) {
  return json(status, { error, message }, { [ERROR_HEADER]: error });
}

function isObj(v) {
  return typeof v === "object" && v !== null;
}

function isEndpoint(v) {
  return isObj(v) && typeof v.handler === "function" && v.$type !== TASK_TAG;
}

function isTask(v) {
  return isObj(v) && typeof v.handler === "function" && v.$type === TASK_TAG;
}

function isJson(ct) {
  if (!ct) return false;
  const mime = ct.split(";")[0].trim().toLowerCase();
  return mime === "application/json" || mime.endsWith("+json");
}

function isThenable(v) {
  return (typeof v === "object" || typeof v === "function") && v !== null && typeof v.then === "function";
}

/** A web Response, told without touching the global (which would load undici). */
function isResponse(v) {
  return isObj(v) && Object.prototype.toString.call(v) === "[object Response]";
}

function methodAllowed(declared, method) {
  if (declared === undefined) return true;
  const d = String(declared).toUpperCase();
  return d === "ANY" || d === method || (d === "GET" && method === "HEAD");
}

function queryObject(search) {
  const out = Object.create(null);
  for (const [k, v] of new URLSearchParams(search)) {
    const prev = out[k];
    if (prev === undefined) out[k] = v;
    else if (Array.isArray(prev)) prev.push(v);
    else out[k] = [prev, v];
  }
  return out;
}

function urlPath(path) {
  return /^[A-Za-z0-9\-_~!$&'()*+,;=:@/%]*$/.test(path) && !/\/\.|%2e/i.test(path)
    ? path
    : new URL(path, "http://x").pathname;
}

function readText(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function runnerError(name, message) {
  const e = new Error(message);
  e.name = /^[A-Za-z]{1,40}$/.test(name) ? name : "EnqueueFailed";
  return e;
}

/** `ctx.enqueue`: queues a run of one of this bundle's tasks (through the egress proxy). */
async function enqueue(task, payload, options = {}) {
  if (typeof task !== "string" || task === "") {
    throw new TypeError("enqueue(): task must be the name of a task this bundle declares");
  }
  const body = JSON.stringify({
    task,
    payload: payload === undefined ? null : payload,
    delayMs: options.delayMs,
    idempotencyKey: options.idempotencyKey,
  });
  let res;
  try {
    res = await fetch(`${RUNNER_URL}/v1/enqueue`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
  } catch (e) {
    throw runnerError("RunnerUnreachable", `enqueue(): the runner could not be reached (${errorName(e)})`);
  }
  const text = await res.text();
  let j = {};
  try {
    j = JSON.parse(text);
  } catch {
    // Not the runner's JSON: reported below by status.
  }
  if (!res.ok || !j.job) {
    throw runnerError(j.error ?? "EnqueueFailed", j.message ?? `enqueue(): the runner answered HTTP ${res.status}`);
  }
  return { id: j.job.id, created: j.created === true, state: j.job.state };
}

class CallContext {
  #c;
  #request;
  constructor(c, rest) {
    this.endpoint = c.name;
    this.rest = rest === "/" ? "" : rest;
    this.#c = c;
  }
  get request() {
    return this.#request ??= callerRequest(this.#c);
  }
  get query() {
    return new URLSearchParams(this.#c.search);
  }
  enqueue(task, payload, options) {
    return enqueue(task, payload, options);
  }
}

/** `ctx.request`: the caller's request on the caller's URL, without reserved headers. */
function callerRequest(c) {
  const { req } = c;
  const headers = new Headers();
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const k = req.rawHeaders[i];
    if (!k.toLowerCase().startsWith(RESERVED_PREFIX)) headers.append(k, req.rawHeaders[i + 1]);
  }
  const host = req.headers.host ?? "localhost";
  const scheme = req.headers["x-forwarded-proto"] === "https" ? "https" : "http";
  let url;
  try {
    url = new URL(c.path + c.search, `${scheme}://${host}`);
  } catch {
    url = new URL(c.path + c.search, "http://localhost");
  }
  const init = { method: req.method, headers };
  if (req.method !== "GET" && req.method !== "HEAD") {
    if (c.text !== undefined) init.body = c.text;
    else {
      init.body = require("node:stream").Readable.toWeb(req);
      init.duplex = "half";
    }
  }
  return new Request(url, init);
}

class TaskContext {
  constructor(task) {
    this.task = task;
  }
  enqueue(task, payload, options) {
    return enqueue(task, payload, options);
  }
}

function threw(name, e) {
  console.error(`endpoint '${name}' threw:`, e);
  return fail(502, "BundleFailed", `endpoint '${name}' threw ${errorName(e)}; the runner's log has details`);
}

function answer(out) {
  if (isResponse(out)) return out;
  if (out === undefined) return plain(204, {}, "");
  return plain(200, { "content-type": "application/json" }, JSON.stringify(out));
}

function invoke(c, input) {
  const { ep, name } = c;
  const schema = ep.input;
  if (schema && typeof schema.validate === "function") {
    let verdict;
    try {
      verdict = schema.validate(input);
    } catch (e) {
      console.error(`endpoint '${name}': input validator threw:`, e);
      return fail(502, "BundleFailed", `the input validator of endpoint '${name}' failed; the runner's log has details`);
    }
    if (!verdict || verdict.ok !== true) {
      const field = verdict && typeof verdict.field === "string" ? verdict.field : "";
      const why = verdict && typeof verdict.message === "string" ? verdict.message : "is invalid";
      const where = field === "" ? "input" : `input field '${field}'`;
      return fail(400, "InvalidInput", `${where} ${why}`);
    }
  }
  const ctx = new CallContext(c, urlPath(c.path));
  let out;
  try {
    out = ep.handler(input, ctx);
    if (!isThenable(out)) return answer(out);
  } catch (e) {
    return threw(name, e);
  }
  return Promise.resolve(out).then(answer).catch((e) => threw(name, e));
}

function call(mod, req, name, path, search) {
  // The default export is never an endpoint, whatever its shape (docs/bundle-abi.md).
  const ep = name !== "default" && Object.hasOwn(mod, name) ? mod[name] : undefined;
  if (!isEndpoint(ep)) return fail(404, "EndpointNotFound", `this bundle has no endpoint '${name}'`);
  if (!methodAllowed(ep.method, req.method)) {
    return fail(405, "MethodNotAllowed", `endpoint '${name}' accepts ${String(ep.method).toUpperCase()}, not ${req.method}`);
  }
  const c = { ep, name, req, path, search, text: undefined };
  if (req.method === "GET" || req.method === "HEAD") {
    return invoke(c, search.length <= 1 ? Object.create(null) : queryObject(search));
  }
  if (isJson(req.headers["content-type"])) {
    return readText(req).then((text) => {
      c.text = text;
      let input;
      if (text.trim() !== "") {
        try {
          input = JSON.parse(text);
        } catch {
          return fail(400, "InvalidInput", "the request body is not valid JSON");
        }
      }
      return invoke(c, input);
    });
  }
  return invoke(c, undefined);
}

async function runTask(mod, req, name) {
  const t = name !== "default" && Object.hasOwn(mod, name) ? mod[name] : undefined;
  if (!isTask(t)) return fail(404, "EndpointNotFound", `this bundle has no task '${name}'`);
  if (req.method !== "POST") return fail(405, "MethodNotAllowed", `a task is run with POST, not ${req.method}`);
  const text = await readText(req);
  let input;
  if (text.trim() !== "") {
    try {
      input = JSON.parse(text);
    } catch {
      return fail(400, "InvalidInput", "the job's payload is not valid JSON");
    }
  }
  let result;
  try {
    result = await t.handler(input, new TaskContext(name));
  } catch (e) {
    console.error(`task '${name}' threw:`, e);
    return fail(502, "BundleFailed", `task '${name}' threw ${errorName(e)}; the runner's log has details`);
  }
  try {
    return json(200, { result: result === undefined ? null : result });
  } catch (e) {
    console.error(`task '${name}' returned a value that is not JSON:`, e);
    return fail(502, "BundleFailed", `task '${name}' returned a value that cannot be sent as JSON`);
  }
}

function handle(mod, req) {
  const url = req.url;
  const q = url.indexOf("?");
  const target = q < 0 ? url : url.slice(0, q);
  const search = q < 0 ? "" : url.slice(q);
  if (target.startsWith(TASK_PREFIX)) return runTask(mod, req, target.slice(TASK_PREFIX.length));
  if (!target.startsWith(CALL_PREFIX)) {
    if (target === "/__atrund/ready") return json(200, { abi: ABI_VERSION });
    return fail(404, "EndpointNotFound", "this is not a call of an endpoint");
  }
  const slash = target.indexOf("/", CALL_PREFIX.length);
  const name = target.slice(CALL_PREFIX.length, slash < 0 ? undefined : slash);
  return call(mod, req, name, slash < 0 ? "/" : target.slice(slash), search);
}

/** Writes a shim answer, or a bundle's web Response (reserved headers stripped, body streamed). */
async function send(res, r, head) {
  if (!isResponse(r)) {
    if (r.status === 204 || r.status === 304 || head) {
      res.writeHead(r.status, r.headers);
      res.end();
      return;
    }
    const body = typeof r.body === "string" ? Buffer.from(r.body) : r.body;
    res.writeHead(r.status, { ...r.headers, "content-length": body.length });
    res.end(body);
    return;
  }
  const headers = [];
  for (const [k, v] of r.headers) {
    const l = k.toLowerCase();
    if (l.startsWith(RESERVED_PREFIX) || l === "content-length" || l === "transfer-encoding" || l === "connection") {
      continue;
    }
    headers.push([k, v]);
  }
  const noBody = head || r.status === 204 || r.status === 304 || r.body === null;
  if (noBody) {
    res.writeHead(r.status, r.statusText || undefined, headers);
    res.end();
    return;
  }
  // A body that is already whole goes out with its length; a stream is sent chunked as it comes.
  res.writeHead(r.status, r.statusText || undefined, headers);
  const reader = r.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (!res.write(value)) await new Promise((ok) => res.once("drain", ok));
  }
  res.end();
}

function awaitGo() {
  // Synchronous on purpose: nothing else may run before go, and fd 0 is a pipe.
  const want = "go\n";
  const buf = Buffer.alloc(want.length);
  let n = 0;
  while (n < buf.length) {
    let r;
    try {
      r = fs.readSync(0, buf, n, buf.length - n, null);
    } catch (e) {
      if (e.code === "EAGAIN") continue;
      return false;
    }
    if (r === 0) return false;
    n += r;
  }
  return buf.toString("latin1") === want;
}

async function main() {
  const [bundle, socket] = process.argv.slice(2);
  if (!bundle || !socket) {
    console.error("usage: node.cjs <bundle file> <socket path>");
    process.exit(64);
  }
  if (!awaitGo()) {
    console.error("no go from at-rund on stdin; not loading the bundle");
    process.exit(71);
  }
  proxyOnFirstUse();
  let mod;
  try {
    const url = "file://" + bundle.split("/").map(encodeURIComponent).join("/");
    mod = await import(url);
    const abi = mod.atrundAbi;
    if (abi !== undefined && abi !== ABI_VERSION) {
      console.error(`bundle declares ABI ${String(abi)}; this shim implements ABI ${ABI_VERSION}`);
      signal({ event: "load-failed", name: "AbiMismatch" });
      process.exit(70);
    }
  } catch (e) {
    console.error("bundle failed to load:", e);
    signal({ event: "load-failed", name: errorName(e) });
    process.exit(70);
  }
  // at-rund owns every timeout; Node's defaults would close kept connections after 5 s.
  const server = http.createServer({ keepAliveTimeout: 0, requestTimeout: 0, headersTimeout: 0 }, (req, res) => {
    let r;
    try {
      r = handle(mod, req);
    } catch (e) {
      console.error("shim error:", e);
      r = fail(502, "BundleFailed", "the runtime shim failed; the runner's log has details");
    }
    Promise.resolve(r)
      .then((out) => send(res, out, req.method === "HEAD"))
      .catch((e) => {
        console.error("shim error:", e);
        if (!res.headersSent) {
          return send(res, fail(502, "BundleFailed", "the runtime shim failed; the runner's log has details"), false);
        }
        // A body that failed mid-stream: cut the connection, which at-rund reports.
        res.destroy(e);
      });
  });
  server.keepAliveTimeout = 0;
  server.listen(socket, () => signal({ event: "ready", abi: ABI_VERSION }));
}

main();
