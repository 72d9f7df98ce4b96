// The conformance kit's bundle for the Deno runtime (`at-rund runtime-test`, docs/runtimes.md).
// Each endpoint is one case; a refused attempt answers { error } and an escape { leaked }.
// KIT_SECRET is the one secret the kit gives the instance.

async function attempt(f) {
  try {
    return { leaked: String(await f()) };
  } catch (e) {
    return { error: e?.name ?? "unknown" };
  }
}

// The protocol.
export const echo = {
  handler: async (input, ctx) => ({
    input: input ?? null,
    rest: ctx.rest,
    method: ctx.request.method,
    endpoint: ctx.endpoint,
  }),
};
export const status = {
  method: "GET",
  handler: () => new Response("created", { status: 201, headers: { "x-kit": "yes" } }),
};
export const stream = {
  method: "GET",
  handler: () => {
    let i = 0;
    const body = new ReadableStream({
      pull(c) {
        if (i < 3) c.enqueue(new TextEncoder().encode(`chunk-${i++}`));
        else c.close();
      },
    });
    return new Response(body);
  },
};
export const nothing = { method: "GET", handler: () => undefined };
export const onlyGet = { method: "GET", handler: () => "get" };
export const throws = { method: "GET", handler: () => { throw new Error("kit: thrown on purpose"); } };
export const aTask = { $type: "dev.atrund.task", handler: () => "task" };
export const secret = { method: "GET", handler: () => attempt(() => Deno.env.get("KIT_SECRET")) };

// Hostile: each must be refused.
export const readHost = { method: "GET", handler: () => attempt(() => Deno.readTextFile("/etc/passwd")) };
export const writeHost = { method: "GET", handler: () => attempt(() => Deno.writeTextFile("/etc/kit-pwned", "x").then(() => "written")) };
export const otherEnv = { method: "GET", handler: () => attempt(() => Deno.env.get("HOME") ?? Deno.env.get("PATH")) };
export const spawn = {
  method: "GET",
  handler: () => attempt(() => new Deno.Command("/bin/sh", { args: ["-c", "echo spawned"] }).output().then((o) => new TextDecoder().decode(o.stdout))),
};
export const loopback = {
  method: "GET",
  handler: () => attempt(async () => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: 22 });
    c.close();
    return "connected";
  }),
};

// Limits: each breaks one and takes its instance with it.
export const sleep = { method: "GET", handler: () => new Promise((r) => setTimeout(() => r("woke"), 600_000)) };
export const spin = { method: "GET", handler: () => { while (true) { /* burn */ } } };
export const hog = {
  method: "GET",
  handler: () => {
    const keep = [];
    while (true) keep.push(new Uint8Array(1 << 20).fill(1));
  },
};
export const big = { method: "GET", handler: () => new Response(new Uint8Array(8 << 20)) };
