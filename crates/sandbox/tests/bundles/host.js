// Bundle for crates/sandbox/tests/host_paths.rs: what a bundle allowed `run` (or one that got
// past Deno's flags) does to the paths the host touches, and what it learns about the host.
async function attempt(f) {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: e?.name ?? "unknown", message: String(e?.message ?? "") };
  }
}

const text = (b) => new TextDecoder().decode(b);

// Runs argv (JSON array; argv[0] an absolute path the manifest's `run` allows).
export const run = {
  handler: ({ argv }) =>
    attempt(async () => {
      const [cmd, ...args] = JSON.parse(argv);
      const o = await new Deno.Command(cmd, { args }).output();
      return { code: o.code, stdout: text(o.stdout), stderr: text(o.stderr) };
    }),
};

// Holds its connection for `ms`, so a concurrent call needs another one.
export const slow = {
  handler: ({ ms }) => new Promise((r) => setTimeout(() => r({ ok: "slow" }), Number(ms))),
};

// Reads `path` `times` times; whether any read got the file.
export const readMany = {
  handler: async ({ path, times }) => {
    const out = { read: null, errors: {} };
    for (let i = 0; i < Number(times); i++) {
      try {
        out.read = await Deno.readTextFile(path);
        return out;
      } catch (e) {
        out.errors[e?.name ?? "unknown"] = (out.errors[e?.name ?? "unknown"] ?? 0) + 1;
      }
    }
    return out;
  },
};

// Writes `mib` MiB into `path` in 1 MiB chunks.
export const fill = {
  handler: ({ path, mib }) =>
    attempt(async () => {
      const f = await Deno.open(path, { write: true, create: true, truncate: true });
      const chunk = new Uint8Array(1024 * 1024);
      try {
        for (let i = 0; i < Number(mib); i++) await f.write(chunk);
      } finally {
        f.close();
      }
      return "written";
    }),
};

// What the bundle can learn about where it runs.
export const reveal = {
  handler: () => {
    const r = {};
    for (const [k, f] of Object.entries({
      cwd: () => Deno.cwd(),
      execPath: () => Deno.execPath(),
      url: () => import.meta.url,
      stack: () => new Error("where").stack,
    })) {
      try {
        r[k] = String(f());
      } catch (e) {
        r[k] = `threw ${e?.name}`;
      }
    }
    return r;
  },
};

// ---- FFI: what a bundle allowed `ffi` does to the paths the host uses ----
let libc;
function c() {
  libc ??= Deno.dlopen("libc.so.6", {
    unlink: { parameters: ["buffer"], result: "i32" },
    symlink: { parameters: ["buffer", "buffer"], result: "i32" },
    __errno_location: { parameters: [], result: "pointer" },
  }).symbols;
  return libc;
}
const cstr = (s) => new TextEncoder().encode(s + "\0");
const errno = () => new Deno.UnsafePointerView(c().__errno_location()).getInt32();

// Replaces `link` with a symlink to `target` (paths as the bundle sees them).
export const plantSymlink = {
  handler: ({ target, link }) => {
    c().unlink(cstr(link));
    const rc = c().symlink(cstr(target), cstr(link));
    return { rc, errno: rc < 0 ? errno() : 0 };
  },
};
