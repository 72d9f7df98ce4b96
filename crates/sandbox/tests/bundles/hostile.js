// A hostile bundle (crates/sandbox/tests/hostile.rs, container.rs): each endpoint tries one
// escape and reports what happened: { leaked } with the data if it got out, else
// { error, message }. Endpoints whose name starts with `os` use FFI to ask libc directly, so they
// test the OS layer beneath Deno's permission flags (they need the `ffi` permission).
// __SECRET__ is replaced by the test with the path of a host file the bundle must not read.

async function attempt(f) {
  try {
    return { leaked: String(await f()) };
  } catch (e) {
    return { error: e?.name ?? "unknown", message: String(e?.message ?? "").slice(0, 200) };
  }
}

export const read = { handler: ({ path }) => attempt(() => Deno.readTextFile(path)) };
export const write = { handler: ({ path }) => attempt(() => Deno.writeTextFile(path, "x").then(() => "written")) };
export const env = { handler: () => attempt(() => JSON.stringify(Deno.env.toObject())) };
export const envGet = { handler: ({ name }) => attempt(() => Deno.env.get(name) ?? null) };
export const literalImport = {
  handler: () => attempt(() => import("file://__SECRET__", { with: { type: "text" } }).then((m) => m.default)),
};
export const fetchUrl = {
  handler: ({ url }) =>
    attempt(async () => {
      const r = await fetch(url, { signal: AbortSignal.timeout(4000) });
      // The egress proxy names its refusals in this header (docs/egress.md).
      const refused = r.headers.get("x-atrund-egress-error");
      return `${r.status} ${await r.text()}` + (refused ? ` [${refused}]` : "");
    }),
};
export const connect = {
  handler: ({ host, port }) =>
    attempt(async () => {
      const c = await Deno.connect({ hostname: host, port: Number(port) });
      c.close();
      return "connected";
    }),
};
export const unixConnect = {
  handler: ({ path }) =>
    attempt(async () => {
      const c = await Deno.connect({ transport: "unix", path });
      c.close();
      return "connected";
    }),
};
export const listen = {
  handler: ({ port }) =>
    attempt(() => {
      const l = Deno.listen({ hostname: "0.0.0.0", port: Number(port) });
      l.close();
      return "listening";
    }),
};
export const spawn = {
  handler: () => attempt(() => new Deno.Command("/bin/sh", { args: ["-c", "echo spawned"] }).output().then((o) => new TextDecoder().decode(o.stdout))),
};
export const fillTmp = {
  handler: () =>
    attempt(async () => {
      const chunk = new Uint8Array(1 << 20);
      const f = await Deno.open("/tmp/fill", { write: true, create: true });
      let n = 0;
      try {
        for (; n < 256; n++) await f.write(chunk);
      } finally {
        f.close();
      }
      return `wrote ${n} MiB`;
    }),
};
export const big = {
  handler: () => {
    const MIB = new Uint8Array(1 << 20);
    let n = 0;
    return new Response(new ReadableStream({
      pull(c) {
        if (n++ === 1024) return c.close();
        c.enqueue(MIB);
      },
    }));
  },
};
export const hog = {
  handler: () => {
    const keep = [];
    while (true) keep.push(new Uint8Array(1 << 20).fill(1));
  },
};
export const spin = { handler: () => { while (true) { /* burn */ } } };
export const workers = {
  handler: async () => {
    const src = "setInterval(() => {}, 1000);";
    const url = URL.createObjectURL(new Blob([src], { type: "application/javascript" }));
    const all = [];
    for (let i = 0; i < 400; i++) all.push(new Worker(url, { type: "module" }));
    await new Promise((r) => setTimeout(r, 2000));
    return { workers: all.length };
  },
};
// The counter also goes to out/ticks (write permission), so the test can watch it without a call.
let ticks = 0;
export const timers = {
  handler: () => {
    Deno.writeTextFileSync("out/ticks", "0");
    setInterval(() => {
      ticks++;
      try { Deno.writeTextFileSync("out/ticks", String(ticks)); } catch { /* still counts */ }
    }, 10);
    return { started: true };
  },
};
export const ticksSoFar = { handler: () => ({ ticks }) };

// ---- FFI: the OS layer ----
let libc;
function c() {
  libc ??= Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
    read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
    close: { parameters: ["i32"], result: "i32" },
    unshare: { parameters: ["i32"], result: "i32" },
    mount: { parameters: ["buffer", "buffer", "buffer", "u64", "pointer"], result: "i32" },
    ptrace: { parameters: ["i64", "i32", "pointer", "pointer"], result: "i64" },
    kill: { parameters: ["i32", "i32"], result: "i32" },
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    sendto: { parameters: ["i32", "buffer", "u64", "i32", "buffer", "u32"], result: "i64" },
    bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    getuid: { parameters: [], result: "u32" },
    __errno_location: { parameters: [], result: "pointer" },
  }).symbols;
  return libc;
}
const cstr = (s) => new TextEncoder().encode(s + "\0");
const errno = () => new Deno.UnsafePointerView(c().__errno_location()).getInt32();
function sys(rc) {
  rc = Number(rc);
  return rc < 0 ? { rc, errno: errno() } : { rc, errno: 0 };
}

export const osRead = {
  handler: ({ path }) => {
    const fd = c().open(cstr(path), 0, 0);
    if (fd < 0) return { errno: errno() };
    const buf = new Uint8Array(1 << 16);
    const n = Number(c().read(fd, buf, buf.length));
    c().close(fd);
    return { text: new TextDecoder().decode(buf.subarray(0, Math.max(n, 0))) };
  },
};
// The same call, judged by the test as a /proc read (text from another process).
export const osReadProc = osRead;
// O_WRONLY|O_CREAT|O_TRUNC
export const osWrite = { handler: ({ path }) => sys(c().open(cstr(path), 0o1101, 0o644)) };
export const osUnshare = { handler: () => sys(c().unshare(0x04000000 /* CLONE_NEWUTS */)) };
export const osMount = {
  handler: () => sys(c().mount(cstr("none"), cstr("/nonexistent-atrund-test"), cstr("tmpfs"), 0n, null)),
};
export const osPtrace = { handler: () => sys(c().ptrace(0n /* PTRACE_TRACEME */, 0, null, null)) };
// Signal 0: checks whether the signal could be sent, sends nothing.
export const osKill = { handler: ({ pid }) => sys(c().kill(Number(pid), 0)) };
export const osUid = { handler: () => ({ uid: c().getuid() }) };
// struct sockaddr_in for an IPv4 literal (x86-64/aarch64: little-endian family).
function sockaddr(host, port) {
  const a = new Uint8Array(16);
  const v = new DataView(a.buffer);
  v.setUint16(0, 2 /* AF_INET */, true);
  v.setUint16(2, Number(port), false);
  host.split(".").forEach((b, i) => (a[4 + i] = Number(b)));
  return a;
}
// TCP around Deno's --allow-net: socket(AF_INET, SOCK_STREAM) then connect or bind.
function tcp(op, host, port) {
  const fd = c().socket(2, 1, 0);
  if (fd < 0) return sys(fd);
  const r = sys(c()[op](fd, sockaddr(host, port), 16));
  c().close(fd);
  return r;
}
export const osConnect = { handler: ({ host, port }) => tcp("connect", host, port) };
export const osBind = { handler: () => tcp("bind", "127.0.0.1", 0) };
// A named Unix socket (D-Bus, a container engine): socket(AF_UNIX, SOCK_STREAM) + connect.
function sockaddrUn(path) {
  const a = new Uint8Array(110);
  new DataView(a.buffer).setUint16(0, 1 /* AF_UNIX */, true);
  const p = new TextEncoder().encode(path);
  a.set(p, 2);
  return [a, 2 + p.length + 1];
}
// A datagram to a named socket (the system log, journald): socket(AF_UNIX, SOCK_DGRAM) + sendto.
export const osUnixSendto = {
  handler: ({ path }) => {
    const fd = c().socket(1, 2 /* SOCK_DGRAM */, 0);
    if (fd < 0) return sys(fd);
    const [a, len] = sockaddrUn(path);
    const r = sys(c().sendto(fd, new Uint8Array([120]), 1n, 0, a, len));
    c().close(fd);
    return r;
  },
};
// TCP Fast Open: sendto(MSG_FASTOPEN) connects and sends, with no connect call.
export const osFastOpen = {
  handler: ({ host, port }) => {
    const fd = c().socket(2, 1, 0);
    if (fd < 0) return sys(fd);
    const r = sys(c().sendto(fd, new TextEncoder().encode("GET"), 3n, 0x20000000, sockaddr(host, port), 16));
    c().close(fd);
    return r;
  },
};
export const osUnixConnect = {
  handler: ({ path }) => {
    const fd = c().socket(1, 1, 0);
    if (fd < 0) return sys(fd);
    const a = new Uint8Array(110);
    new DataView(a.buffer).setUint16(0, 1 /* AF_UNIX */, true);
    const p = new TextEncoder().encode(path);
    a.set(p, 2);
    const r = sys(c().connect(fd, a, 2 + p.length + 1));
    c().close(fd);
    return r;
  },
};
