// at-run-exec: the Deno runtime shim of at-rund, bundle ABI v1 (docs/bundle-abi.md).
//
// Owns: loading one bundle, serving its endpoints as HTTP/1.1 on a Unix socket that at-rund
// proxies to, mapping input and results, and reporting failures in a structured way.
// Must not: relay stack traces or raw load errors to callers (they can quote files, see
// isolation.md §2.4), nor widen what the bundle may do (permissions come from Deno's flags).
//
// Usage: deno run <flags> main.ts <bundle file> <socket path>, then `go\n` on stdin.
// at-rund embeds this file in its binary and writes it into the instance's work dir.

/** The bundle ABI this shim implements. */
export const ABI_VERSION = 1;

/**
 * Path prefix of calls: at-rund sends `/e/<endpoint><rest>?<query>` (it validated the endpoint as
 * an identifier, so it holds no `/`). A path rather than a header, so a call that reads no header
 * does not make Deno build the request's Headers (docs/performance.md, issue 14).
 */
const CALL_PREFIX = "/e/";
/**
 * Path prefix of task runs: at-rund sends `POST /t/<task>` with the job's payload as JSON and
 * reads `{"result": ...}` back. Tasks and endpoints never share a prefix, so neither can be
 * reached as the other.
 */
const TASK_PREFIX = "/t/";
/** Header by which this shim reports a structured failure to at-rund. */
const ERROR_HEADER = "x-atrund-error";
/** Prefix of headers reserved for at-rund and the shim; stripped in both directions. */
const RESERVED_PREFIX = "x-atrund-";

type Schema = { validate(value: unknown): { ok: true } | { ok: false; field?: string; message?: string } };
type Ctx = { request: Request; endpoint: string; rest: string; query: URLSearchParams; enqueue: typeof enqueue };
type Endpoint = { method?: string; input?: unknown; handler: (input: unknown, ctx: Ctx) => unknown };
type Task = { $type: string; handler: (input: unknown, ctx: TaskContext) => unknown };
type EnqueueOptions = { delayMs?: number; idempotencyKey?: string };

/**
 * The runner itself, reached through the egress proxy that every fetch of this instance goes
 * through: the proxy answers this reserved name for this instance's bundle only, never
 * connecting anywhere (docs/jobs.md, "From bundle code").
 */
const RUNNER_URL = "http://runner.atrund.internal";

/** An error named as the runner named it, so a bundle can tell `TaskNotFound` from `JobQuotaExceeded`. */
function runnerError(name: string, message: string): Error {
  const e = new Error(message);
  e.name = /^[A-Za-z]{1,40}$/.test(name) ? name : "EnqueueFailed";
  return e;
}

/** `ctx.enqueue`: queues a run of one of this bundle's tasks, of this same version. */
export async function enqueue(
  task: string,
  payload?: unknown,
  options: EnqueueOptions = {},
): Promise<{ id: number; created: boolean; state: string }> {
  if (typeof task !== "string" || task === "") {
    throw new TypeError("enqueue(): task must be the name of a task this bundle declares");
  }
  const body = JSON.stringify({
    task,
    payload: payload === undefined ? null : payload,
    delayMs: options.delayMs,
    idempotencyKey: options.idempotencyKey,
  });
  let res: Response;
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
  let json: { job?: { id: number; state: string }; created?: boolean; error?: string; message?: string } = {};
  try {
    json = JSON.parse(text);
  } catch {
    // Not the runner's JSON: reported below by status.
  }
  if (!res.ok || !json.job) {
    throw runnerError(json.error ?? "EnqueueFailed", json.message ?? `enqueue(): the runner answered HTTP ${res.status}`);
  }
  return { id: json.job.id, created: json.created === true, state: json.job.state };
}

/** `ctx` of a task run. */
class TaskContext {
  task: string;
  constructor(task: string) {
    this.task = task;
  }
  enqueue(task: string, payload?: unknown, options?: EnqueueOptions) {
    return enqueue(task, payload, options);
  }
}

/** One line on stdout for at-rund; a bundle printing the same line only confuses its own instance. */
export function signal(obj: Record<string, unknown>): void {
  console.log(JSON.stringify({ atrund: obj.event, ...obj, event: undefined }));
}

/** Only a short, letters-only error class name leaves the process; never the message. */
export function errorName(e: unknown): string {
  const n = (e as { name?: unknown } | null)?.name;
  return typeof n === "string" && /^[A-Za-z]{1,40}$/.test(n) ? n : "Error";
}

export function fail(status: number, error: string, message: string): Response {
  return new Response(JSON.stringify({ error, message }), {
    status,
    headers: { "content-type": "application/json", [ERROR_HEADER]: error },
  });
}

/** Exports tagged as tasks (`task()` of @at-run/runtime) have a handler but are never served. */
const TASK_TAG = "dev.atrund.task";

function isEndpoint(v: unknown): v is Endpoint {
  return typeof v === "object" && v !== null && typeof (v as Endpoint).handler === "function" &&
    (v as { $type?: unknown }).$type !== TASK_TAG;
}

function isTask(v: unknown): v is Task {
  return typeof v === "object" && v !== null && typeof (v as Task).handler === "function" &&
    (v as { $type?: unknown }).$type === TASK_TAG;
}

function isJson(contentType: string | null): boolean {
  if (!contentType) return false;
  const mime = contentType.split(";")[0].trim().toLowerCase();
  return mime === "application/json" || mime.endsWith("+json");
}

/** Query string as an object; a key given more than once becomes an array, in order. */
function queryObject(q: URLSearchParams): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = Object.create(null);
  for (const [k, v] of q) {
    const prev = out[k];
    if (prev === undefined) out[k] = v;
    else if (Array.isArray(prev)) prev.push(v);
    else out[k] = [prev, v];
  }
  return out;
}

/** Path and query of the raw request URL (Deno spells Unix-socket URLs `http+unix://host/...`). */
export function pathAndQuery(raw: string): string {
  const afterScheme = raw.indexOf("://");
  const slash = raw.indexOf("/", afterScheme < 0 ? 0 : afterScheme + 3);
  return slash < 0 ? "/" : raw.slice(slash);
}

/** The URL the caller used, for `ctx.request`: the call's path and query on the caller's host. */
function callerUrl(req: Request, path: string): URL {
  const host = req.headers.get("host") ?? "localhost";
  // at-rund always sets x-forwarded-proto, to "https" only when a trusted TLS proxy said so
  // (docs/bundle-abi.md); a caller's own value never gets here.
  const scheme = req.headers.get("x-forwarded-proto") === "https" ? "https" : "http";
  try {
    return new URL(path, `${scheme}://${host}`);
  } catch {
    return new URL(path, "http://localhost");
  }
}

function methodAllowed(declared: string | undefined, method: string): boolean {
  if (declared === undefined) return true;
  const d = declared.toUpperCase();
  return d === "ANY" || d === method || (d === "GET" && method === "HEAD");
}

/** Copies a bundle's response without reserved headers, so a bundle cannot fake a shim error. */
function passThrough(res: Response): Response {
  let reserved = false;
  for (const k of res.headers.keys()) {
    if (k.toLowerCase().startsWith(RESERVED_PREFIX)) {
      reserved = true;
      break;
    }
  }
  // Nothing to remove from a response the bundle built: it goes out as it is.
  if (!reserved && res.type === "default") return res;
  const headers = new Headers();
  for (const [k, v] of res.headers) {
    if (!k.toLowerCase().startsWith(RESERVED_PREFIX)) headers.append(k, v);
  }
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}

/** Splits a request target into path and search ("" or "?..."). */
function splitTarget(pq: string): [string, string] {
  const q = pq.indexOf("?");
  return q < 0 ? [pq, ""] : [pq.slice(0, q), pq.slice(q)];
}

/**
 * The path as `URL.pathname` has it. A path of plain URL characters without dot segments is
 * already that; anything else goes through the URL parser, so both give the same `ctx.rest`.
 */
function urlPath(path: string): string {
  return /^[A-Za-z0-9\-_~!$&'()*+,;=:@/%]*$/.test(path) && !/\/\.|%2e/i.test(path)
    ? path
    : new URL(path, "http://x").pathname;
}

function call(
  mod: Record<string, unknown>,
  req: Request,
  name: string,
  path: string,
  search: string,
): Response | Promise<Response> {
  // The default export is never an endpoint, whatever its shape (docs/bundle-abi.md).
  const ep = name !== "default" && Object.hasOwn(mod, name) ? mod[name] : undefined;
  if (!isEndpoint(ep)) {
    return fail(404, "EndpointNotFound", `this bundle has no endpoint '${name}'`);
  }
  if (!methodAllowed(ep.method, req.method)) {
    return fail(405, "MethodNotAllowed", `endpoint '${name}' accepts ${String(ep.method).toUpperCase()}, not ${req.method}`);
  }
  const call: Call = { ep, name, req, path, search, query: undefined };
  if (req.method === "GET" || req.method === "HEAD") {
    // No body to wait for: a synchronous handler's response is returned synchronously, which
    // Deno.serve sends without a promise turn (docs/performance.md, issue 14).
    const input = search.length <= 1 ? Object.create(null) : queryObject(queryOf(call));
    return invoke(call, input, null, true);
  }
  if (isJson(req.headers.get("content-type"))) {
    // Read the body once and hand the text on, so ctx.request stays readable.
    return req.text().then((text) => {
      let input: unknown = undefined;
      if (text.trim() !== "") {
        try {
          input = JSON.parse(text);
        } catch {
          return fail(400, "InvalidInput", "the request body is not valid JSON");
        }
      }
      return invoke(call, input, text, true);
    });
  }
  return invoke(call, undefined, req.body, false);
}

/** One call of an endpoint on its way through the shim. */
type Call = {
  ep: Endpoint;
  name: string;
  req: Request;
  path: string;
  search: string;
  /** Parsed when something reads it: parsing costs more than a small call. */
  query: URLSearchParams | undefined;
};

function queryOf(c: Call): URLSearchParams {
  return c.query ??= new URLSearchParams(c.search);
}

/**
 * Validates `input` and runs the handler. `lazy`: the body is settled (none, or text read
 * here), so ctx.request can be built on first use; a streamed body is handed on now.
 */
function invoke(c: Call, input: unknown, body: BodyInit | null, lazy: boolean): Response | Promise<Response> {
  const { ep, name } = c;
  const schema = ep.input as Schema | undefined;
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

  const ctx = new CallContext(c, body, lazy, urlPath(c.path));
  let out: unknown;
  try {
    out = ep.handler(input, ctx);
    if (!isThenable(out)) return answer(out);
  } catch (e) {
    return threw(name, e);
  }
  return Promise.resolve(out).then(answer).catch((e) => threw(name, e));
}

/**
 * `ctx` of one call. A class, not an object literal with getters: per-call getter closures in a
 * literal made V8 keep megabytes of young objects alive, so each young-generation collection of
 * an instance took 2-13 ms instead of 0.06 (docs/performance.md, issue 14).
 */
class CallContext implements Ctx {
  endpoint: string;
  rest: string;
  #call: Call;
  #body: BodyInit | null;
  #request: Request | undefined;

  /** `lazy`: the body is settled, so the Request is made when the handler first reads it. */
  constructor(call: Call, body: BodyInit | null, lazy: boolean, rest: string) {
    this.endpoint = call.name;
    this.rest = rest === "/" ? "" : rest;
    this.#call = call;
    this.#body = body;
    this.#request = lazy ? undefined : callerRequest(call, body);
  }

  get request(): Request {
    return this.#request ??= callerRequest(this.#call, this.#body);
  }

  get query(): URLSearchParams {
    return queryOf(this.#call);
  }

  enqueue(task: string, payload?: unknown, options?: EnqueueOptions) {
    return enqueue(task, payload, options);
  }
}

/**
 * `ctx.request`: the caller's request on the caller's URL, without reserved headers. Building it
 * (and touching req.signal) costs more than the rest of a small call, so it is made on demand.
 */
function callerRequest(c: Call, body: BodyInit | null): Request {
  const { req } = c;
  const headers = new Headers();
  for (const [k, v] of req.headers) {
    if (!k.toLowerCase().startsWith(RESERVED_PREFIX)) headers.append(k, v);
  }
  return new Request(callerUrl(req, c.path + c.search), { method: req.method, headers, body, signal: req.signal });
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (typeof v === "object" || typeof v === "function") && v !== null &&
    typeof (v as { then?: unknown }).then === "function";
}

/** The caller's response for a handler's result (a Response, nothing, or a JSON value). */
function answer(out: unknown): Response {
  if (out instanceof Response) return passThrough(out);
  if (out === undefined) return new Response(null, { status: 204 });
  return new Response(JSON.stringify(out), { headers: { "content-type": "application/json" } });
}

/** A handler (or its result) threw: logged for the operator only; the caller learns the class name at most. */
function threw(name: string, e: unknown): Response {
  console.error(`endpoint '${name}' threw:`, e);
  return fail(502, "BundleFailed", `endpoint '${name}' threw ${errorName(e)}; the runner's log has details`);
}

/**
 * Waits for at-rund's `go\n` on stdin: it is sent once this process is inside the instance's
 * cgroup, so no bundle code runs outside it (Deno itself starts meanwhile). Anything else, or
 * end of input first, means at-rund gave up on this instance.
 */
async function awaitGo(): Promise<boolean> {
  const want = [0x67, 0x6f, 0x0a];
  const got = new Uint8Array(want.length);
  let n = 0;
  while (n < got.length) {
    const r = await Deno.stdin.read(got.subarray(n));
    if (r === null) return false;
    n += r;
  }
  return got.every((b, i) => b === want[i]);
}

async function main(): Promise<void> {
  const [bundle, socket] = Deno.args;
  if (!bundle || !socket) {
    console.error("usage: main.ts <bundle file> <socket path>");
    Deno.exit(64);
  }
  if (!(await awaitGo())) {
    console.error("no go from at-rund on stdin; not loading the bundle");
    Deno.exit(71);
  }
  let mod: Record<string, unknown>;
  try {
    // A computed specifier on purpose: Deno then checks the bundle's whole import tree against
    // --allow-read, which refuses literal imports of files outside it (isolation.md §2.4).
    const url = "file://" + bundle.split("/").map(encodeURIComponent).join("/");
    mod = await import(url);
    const abi = mod.atrundAbi;
    if (abi !== undefined && abi !== ABI_VERSION) {
      console.error(`bundle declares ABI ${String(abi)}; this shim implements ABI ${ABI_VERSION}`);
      signal({ event: "load-failed", name: "AbiMismatch" });
      Deno.exit(70);
    }
  } catch (e) {
    console.error("bundle failed to load:", e);
    signal({ event: "load-failed", name: errorName(e) });
    Deno.exit(70);
  }

  Deno.serve({
    path: socket,
    onListen() {
      signal({ event: "ready", abi: ABI_VERSION });
    },
    onError(e) {
      console.error("shim error:", e);
      return fail(502, "BundleFailed", "the runtime shim failed; the runner's log has details");
    },
  }, (req) => handle(mod, req));
}

/** One request of at-rund to this shim: the readiness probe, or a call of an endpoint of `mod`. */
export function handle(mod: Record<string, unknown>, req: Request): Response | Promise<Response> {
  const [target, search] = splitTarget(pathAndQuery(req.url));
  if (target.startsWith(TASK_PREFIX)) {
    return runTask(mod, req, target.slice(TASK_PREFIX.length));
  }
  if (!target.startsWith(CALL_PREFIX)) {
    if (new URL(target, "http://x").pathname === "/__atrund/ready") {
      return Response.json({ abi: ABI_VERSION });
    }
    return fail(404, "EndpointNotFound", "this is not a call of an endpoint");
  }
  const slash = target.indexOf("/", CALL_PREFIX.length);
  const name = target.slice(CALL_PREFIX.length, slash < 0 ? undefined : slash);
  return call(mod, req, name, slash < 0 ? "/" : target.slice(slash), search);
}

/** One run of task `name` for a job: its payload is the JSON body, its result the answer. */
async function runTask(mod: Record<string, unknown>, req: Request, name: string): Promise<Response> {
  const t = name !== "default" && Object.hasOwn(mod, name) ? mod[name] : undefined;
  if (!isTask(t)) {
    return fail(404, "EndpointNotFound", `this bundle has no task '${name}'`);
  }
  if (req.method !== "POST") {
    return fail(405, "MethodNotAllowed", `a task is run with POST, not ${req.method}`);
  }
  const text = await req.text();
  let input: unknown = undefined;
  if (text.trim() !== "") {
    try {
      input = JSON.parse(text);
    } catch {
      return fail(400, "InvalidInput", "the job's payload is not valid JSON");
    }
  }
  let result: unknown;
  try {
    result = await t.handler(input, new TaskContext(name));
  } catch (e) {
    console.error(`task '${name}' threw:`, e);
    return fail(502, "BundleFailed", `task '${name}' threw ${errorName(e)}; the runner's log has details`);
  }
  try {
    return Response.json({ result: result === undefined ? null : result });
  } catch (e) {
    console.error(`task '${name}' returned a value that is not JSON:`, e);
    return fail(502, "BundleFailed", `task '${name}' returned a value that cannot be sent as JSON`);
  }
}

if (import.meta.main) await main();
