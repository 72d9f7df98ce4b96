// The conformance kit's bundle for the Node.js runtime (`at-rund runtime-test --runtime node`,
// docs/runtimes.md): the Deno kit's cases with node: built-ins instead of Deno.*. Each endpoint is
// one case; a refused attempt answers { error } and an escape { leaked }. KIT_SECRET is the one
// secret the kit gives the instance.

async function attempt(f) {
  try {
    return { leaked: String(await f()) };
  } catch (e) {
    return { error: e?.code ?? e?.name ?? "unknown" };
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
export const secret = { method: "GET", handler: () => attempt(() => process.env.KIT_SECRET) };

// Hostile: each must be refused.
export const readHost = {
  method: "GET",
  handler: () => attempt(async () => (await import("node:fs/promises")).readFile("/etc/passwd", "utf8")),
};
export const writeHost = {
  method: "GET",
  handler: () => attempt(async () => {
    await (await import("node:fs/promises")).writeFile("/etc/kit-pwned", "x");
    return "written";
  }),
};
// Node has no environment permission: the runner's cleared environment is the whole rule.
export const otherEnv = {
  method: "GET",
  handler: () => attempt(() => {
    const v = process.env.HOME ?? process.env.PATH ?? process.env.USER;
    if (v === undefined) throw Object.assign(new Error("not set"), { code: "NotSet" });
    return v;
  }),
};
export const spawn = {
  method: "GET",
  handler: () => attempt(async () => (await import("node:child_process")).execFileSync("/bin/sh", ["-c", "echo spawned"]).toString()),
};
export const loopback = {
  method: "GET",
  handler: () => attempt(async () => {
    const net = await import("node:net");
    return await new Promise((ok, fail) => {
      const c = net.connect({ host: "127.0.0.1", port: 22 }, () => {
        c.destroy();
        ok("connected");
      });
      c.on("error", fail);
    });
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

// Node's own holes, each closed beneath Node (docs/runtimes.md "What each mode promises").
// node:sqlite opens files outside Node's permission model.
export const sqliteOutside = {
  method: "GET",
  handler: () => attempt(async () => {
    const { DatabaseSync } = await import("node:sqlite");
    new DatabaseSync("/data/kit-sqlite.db").exec("create table if not exists t(x)");
    return "created";
  }),
};
// Node's model has no network rules: UDP and raw TCP are the kernel layer's to refuse.
export const udp = {
  method: "GET",
  handler: () => attempt(async () => {
    const dgram = await import("node:dgram");
    const s = dgram.createSocket("udp4");
    return await new Promise((ok, fail) => {
      s.on("error", fail);
      s.send("kit", 9, "127.0.0.1", (e, n) => {
        s.close();
        e ? fail(e) : ok(`sent ${n}`);
      });
    });
  }),
};
// The egress proxy's port on another loopback address: only the proxy itself may be reached.
export const proxyPortElsewhere = {
  method: "GET",
  handler: () => attempt(async () => {
    const net = await import("node:net");
    const port = Number(new URL(process.env.HTTP_PROXY ?? "http://x:3128").port || 3128);
    return await new Promise((ok, fail) => {
      const c = net.connect({ host: "127.0.0.2", port }, () => {
        c.destroy();
        ok(`connected 127.0.0.2:${port}`);
      });
      c.on("error", fail);
    });
  }),
};
// Workers, WASI and the inspector: refused by --permission without their --allow-* flags.
export const runtimeApis = {
  method: "GET",
  handler: () => attempt(async () => {
    const worked = [];
    const tries = {
      worker: async () => new (await import("node:worker_threads")).Worker("1", { eval: true }).terminate(),
      wasi: async () => new (await import("node:wasi")).WASI({ version: "preview1" }),
      inspector: async () => (await import("node:inspector")).open(0),
    };
    for (const [name, f] of Object.entries(tries)) {
      try {
        await f();
        worked.push(name);
      } catch {
        // refused, as it must be
      }
    }
    if (worked.length === 0) throw Object.assign(new Error("all refused"), { code: "ERR_ACCESS_DENIED" });
    return worked.join(",");
  }),
};
// Node follows a symlink inside a granted dir to wherever it points: the kernel layer refuses the
// target (none), or the target is not in the sandbox (container). The kit plants in/link → /etc/passwd.
export const symlinkOut = {
  method: "GET",
  handler: async () => {
    const fs = await import("node:fs/promises");
    // Without the planted link the case would pass for nothing: say so as a leak.
    const planted = await fs.lstat("in/link").then((st) => st.isSymbolicLink(), () => false);
    if (!planted) return { leaked: "the kit's link in/link is missing: this case proved nothing" };
    return attempt(() => fs.readFile("in/link", "utf8"));
  },
};
// Another process's environment, and a host file imported as a module.
export const procEnviron = {
  method: "GET",
  handler: () => attempt(async () => (await import("node:fs/promises")).readFile("/proc/1/environ", "latin1")),
};
export const importHost = {
  method: "GET",
  handler: () => attempt(async () => JSON.stringify(await import("/etc/passwd", { with: { type: "json" } }))),
};
// Node's model has no network rules: a TCP listen is the kernel layer's to refuse.
export const listen = {
  method: "GET",
  handler: () => attempt(async () => {
    const net = await import("node:net");
    return await new Promise((ok, fail) => {
      const s = net.createServer();
      s.on("error", fail);
      s.listen(0, "0.0.0.0", () => {
        const { port } = s.address();
        s.close();
        ok(`listening on ${port}`);
      });
    });
  }),
};
// Signal 0 to the runner's process: the check alone, so a leak harms nothing.
export const signalRunner = {
  method: "GET",
  handler: (input) => attempt(() => {
    process.kill(Number(input.pid), 0);
    return `may signal ${input.pid}`;
  }),
};
