// Asks the kernel directly (FFI to libc's `syscall`) for calls the sandbox's seccomp filters
// refuse (crates/sandbox/tests/seccomp.rs). Every answer is { rc, errno }.
let libc;
function c() {
  libc ??= Deno.dlopen("libc.so.6", {
    syscall: { parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], result: "i64" },
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    mknod: { parameters: ["buffer", "u32", "u64"], result: "i32" },
    __errno_location: { parameters: [], result: "pointer" },
  }).symbols;
  return libc;
}
const errno = () => new Deno.UnsafePointerView(c().__errno_location()).getInt32();
function answer(rc) {
  rc = Number(rc);
  return rc < 0 ? { rc, errno: errno() } : { rc, errno: 0 };
}
const big = (v) => BigInt(v ?? 0);

// syscall(nr, a0..a5) with small integer arguments.
export const raw = {
  handler: ({ nr, a0, a1, a2 }) => answer(c().syscall(big(nr), big(a0), big(a1), big(a2), 0n, 0n, 0n)),
};
// socket(family, type, protocol), closed again when it opened.
export const socket = {
  handler: ({ family, type, protocol }) => {
    const fd = c().socket(Number(family), Number(type), Number(protocol ?? 0));
    const a = answer(fd);
    if (fd >= 0) c().close(fd);
    return a;
  },
};
// mknod(path, mode, dev) relative to the data dir (the instance's working directory).
export const mknod = {
  handler: ({ path, mode }) =>
    answer(c().mknod(new TextEncoder().encode(path + "\0"), Number(mode), 0x0700n /* 7:0 */)),
};
