// at-run-exec, generic mode: the shim of a pre-warmed generic sandbox (docs/design.md,
// "Pre-warmed generic sandboxes"). Deno, the shim and the HTTP server on the Unix socket start
// before any bundle is known; at-rund then hands over one bundle, once, on stdin.
//
// Owns: waiting for the one specialisation line, putting the bundle's secrets into the
// environment, importing the bundle and serving it with the same call path as main.ts.
// Must not: decide permissions (every check goes to at-rund's permission broker, which answers
// from the bundle's manifest once specialised and refuses everything but the shim's own socket
// before), or take a second bundle (the process ends with its one instance).
//
// Usage: DENO_PERMISSION_BROKER_PATH=<broker> deno run <flags> generic.ts <socket path>, then one
// JSON line on stdin: {"bundle": "<file inside>", "env": {"NAME": "value", ...}}.

import { ABI_VERSION, errorName, fail, handle, pathAndQuery, signal } from "./at-run-exec.ts";

type Spec = { bundle: string; env: Record<string, string> };

/** Reads one line (the specialisation) from stdin; null when stdin ends first. */
async function readLine(): Promise<string | null> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await Deno.stdin.read(buf);
    if (n === null) return null;
    const part = buf.subarray(0, n);
    const nl = part.indexOf(0x0a);
    chunks.push(part.slice(0, nl < 0 ? n : nl));
    if (nl >= 0) break;
  }
  const all = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  return new TextDecoder().decode(all);
}

async function main(): Promise<void> {
  const [socket] = Deno.args;
  if (!socket) {
    console.error("usage: generic.ts <socket path>");
    Deno.exit(64);
  }
  let mod: Record<string, unknown> | undefined;
  // Up before the bundle is known, so the first call finds a listening, JIT-warm server; until
  // the bundle is loaded only the readiness probe answers.
  Deno.serve({
    path: socket,
    onListen() {},
    onError(e) {
      console.error("shim error:", e);
      return fail(502, "BundleFailed", "the runtime shim failed; the runner's log has details");
    },
  }, (req) => {
    // Calls are main.ts's (`handle`); before the bundle, only the probe answers.
    if (mod !== undefined) return handle(mod, req);
    if (new URL(pathAndQuery(req.url), "http://x").pathname === "/__atrund/ready") {
      return Response.json({ abi: ABI_VERSION });
    }
    return fail(503, "NotReady", "this sandbox has no bundle yet");
  });

  const line = await readLine();
  if (line === null) {
    console.error("no bundle from at-rund on stdin; exiting");
    Deno.exit(71);
  }
  let spec: Spec;
  try {
    spec = JSON.parse(line);
  } catch {
    console.error("the specialisation line is not JSON");
    Deno.exit(71);
  }
  try {
    // Each set is a permission check: the broker allows exactly the bundle's secret names.
    for (const [k, v] of Object.entries(spec.env ?? {})) Deno.env.set(k, v);
    // A computed specifier, as in main.ts: the whole import tree is checked against read.
    const url = "file://" + spec.bundle.split("/").map(encodeURIComponent).join("/");
    const m = await import(url);
    const abi = m.atrundAbi;
    if (abi !== undefined && abi !== ABI_VERSION) {
      console.error(`bundle declares ABI ${String(abi)}; this shim implements ABI ${ABI_VERSION}`);
      signal({ event: "load-failed", name: "AbiMismatch" });
      Deno.exit(70);
    }
    mod = m;
  } catch (e) {
    console.error("bundle failed to load:", e);
    signal({ event: "load-failed", name: errorName(e) });
    Deno.exit(70);
  }
  signal({ event: "ready", abi: ABI_VERSION });
}

if (import.meta.main) await main();
