// Bundle for crates/sandbox/tests/no_root.rs: who the instance is, asked of the kernel directly
// (FFI to libc), and what a root-only power would still give it.
let libc;
function c() {
  libc ??= Deno.dlopen("libc.so.6", {
    getuid: { parameters: [], result: "u32" },
    geteuid: { parameters: [], result: "u32" },
    getgid: { parameters: [], result: "u32" },
    getegid: { parameters: [], result: "u32" },
    getgroups: { parameters: ["i32", "buffer"], result: "i32" },
    capget: { parameters: ["buffer", "buffer"], result: "i32" },
    prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
    syscall: { parameters: ["i64", "i64", "i64", "i64"], result: "i64" },
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    __errno_location: { parameters: [], result: "pointer" },
  }).symbols;
  return libc;
}
const errno = () => new Deno.UnsafePointerView(c().__errno_location()).getInt32();
const answer = (rc) => (Number(rc) < 0 ? { rc: Number(rc), errno: errno() } : { rc: Number(rc), errno: 0 });

const PR_CAPBSET_READ = 23;
const PR_CAP_AMBIENT = 47;
const PR_CAP_AMBIENT_IS_SET = 1;
const PR_GET_NO_NEW_PRIVS = 39;

// Ids, supplementary groups, and the capability sets as 64-bit masks (hex strings).
export const whoami = {
  handler: () => {
    const l = c();
    const header = new Uint32Array([0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0]);
    const data = new Uint32Array(6); // 2 × { effective, permitted, inheritable }
    const rc = l.capget(new Uint8Array(header.buffer), new Uint8Array(data.buffer));
    const mask = (lo, hi) => ((BigInt(hi) << 32n) | BigInt(lo)).toString(16);
    let bounding = 0n, ambient = 0n;
    for (let cap = 0; cap < 64; cap++) {
      if (l.prctl(PR_CAPBSET_READ, BigInt(cap), 0n, 0n, 0n) === 1) bounding |= 1n << BigInt(cap);
      if (l.prctl(PR_CAP_AMBIENT, BigInt(PR_CAP_AMBIENT_IS_SET), BigInt(cap), 0n, 0n) === 1) {
        ambient |= 1n << BigInt(cap);
      }
    }
    return {
      uid: l.getuid(),
      euid: l.geteuid(),
      gid: l.getgid(),
      egid: l.getegid(),
      groups: l.getgroups(0, null),
      capget: rc,
      effective: mask(data[0], data[3]),
      permitted: mask(data[1], data[4]),
      inheritable: mask(data[2], data[5]),
      bounding: bounding.toString(16),
      ambient: ambient.toString(16),
      noNewPrivs: l.prctl(PR_GET_NO_NEW_PRIVS, 0n, 0n, 0n, 0n),
    };
  },
};

// syscall(nr, a0, a1, a2): setuid(0) and friends.
export const raw = {
  handler: ({ nr, a0, a1, a2 }) =>
    answer(c().syscall(BigInt(nr), BigInt(a0 ?? 0), BigInt(a1 ?? 0), BigInt(a2 ?? 0))),
};

// open(path, O_RDONLY) relative to the data dir (the working directory), closed again.
export const open = {
  handler: ({ path }) => {
    const fd = c().open(new TextEncoder().encode(path + "\0"), 0);
    const a = answer(fd);
    if (fd >= 0) c().close(fd);
    return a;
  },
};
