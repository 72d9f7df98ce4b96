// The bundle of crates/sandbox/tests/generic.rs: each endpoint does one thing a manifest may or
// may not allow and reports { ok } with what it got, or { error } with the error's name. The
// `os` endpoints ask libc directly (they need `ffi`), to test the kernel beneath the broker.

async function attempt(f) {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: e?.name ?? "unknown", message: String(e?.message ?? "").slice(0, 200) };
  }
}

export const read = { handler: ({ path }) => attempt(() => Deno.readTextFile(path)) };
export const write = { handler: ({ path }) => attempt(() => Deno.writeTextFile(path, "written").then(() => "written")) };
export const envGet = { handler: ({ name }) => attempt(() => Deno.env.get(name) ?? null) };
export const envAll = { handler: () => attempt(() => Object.keys(Deno.env.toObject()).length) };
export const net = {
  handler: ({ url }) => attempt(async () => {
    const r = await fetch(url, { signal: AbortSignal.timeout(4000) });
    return `${r.status} ${await r.text()}`;
  }),
};
export const run = { handler: () => attempt(() => new Deno.Command("/bin/true").output().then((o) => o.code)) };
export const sys = { handler: () => attempt(() => Deno.hostname()) };
// An absolute path: under the permission broker Deno resolves a bare library name against the
// working dir before it asks.
const LIBCS = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6"];
function dlopen(symbols) {
  let last;
  for (const path of LIBCS) {
    try {
      return Deno.dlopen(path, symbols);
    } catch (e) {
      if (e.name === "NotCapable") throw e;
      last = e;
    }
  }
  throw last;
}
export const ffi = { handler: () => attempt(() => { dlopen({}).close(); return "opened"; }) };

// What a previous bundle could have left behind in this process or its /tmp.
export const mark = {
  handler: ({ value }) => {
    let tmp = null;
    try {
      tmp = Deno.readTextFileSync("/tmp/mark");
    } catch (e) {
      if (e.name !== "NotFound") tmp = `error: ${e.name}`;
    }
    const before = { global: globalThis.atrundMark ?? null, tmp };
    globalThis.atrundMark = value;
    Deno.writeTextFileSync("/tmp/mark", value);
    return { ok: before };
  },
};

let libc;
function c() {
  libc ??= dlopen({
    open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
    umount2: { parameters: ["buffer", "i32"], result: "i32" },
    mount: { parameters: ["buffer", "buffer", "buffer", "u64", "pointer"], result: "i32" },
    __errno_location: { parameters: [], result: "pointer" },
  }).symbols;
  return libc;
}
const cstr = (s) => new TextEncoder().encode(s + "\0");
const errno = () => new Deno.UnsafePointerView(c().__errno_location()).getInt32();
const sysret = (rc) => (rc = Number(rc), rc < 0 ? { rc, errno: errno() } : { rc, errno: 0 });
// O_WRONLY|O_CREAT|O_TRUNC
export const osWrite = { handler: ({ path }) => sysret(c().open(cstr(path), 0o1101, 0o644)) };
// MNT_DETACH
export const osUmount = { handler: ({ path }) => sysret(c().umount2(cstr(path), 2)) };
// MS_REMOUNT | MS_BIND, without MS_RDONLY: an attempt to make a read-only bind writable.
export const osRemountRw = {
  handler: ({ path }) => sysret(c().mount(cstr("none"), cstr(path), cstr("none"), 0x20n | 0x1000n, null)),
};

// n permission-checked reads of the bundle itself, timed inside: the cost of a check (Deno's
// flags, or a round trip to at-rund's permission broker).
export const reads = {
  handler: ({ n }) => {
    const self = new URL(import.meta.url).pathname;
    const t = performance.now();
    for (let i = 0; i < Number(n); i++) Deno.readTextFileSync(self);
    return { ms: performance.now() - t };
  },
};
