// What the bundle's top-level code sees: it must already run inside the instance's cgroup
// (crates/sandbox/tests/limits.rs). Deno refuses /proc reads without --allow-all, so `cat`
// reads this process's cgroups. Landlock grants nothing of /proc, so with OS confinement on
// that fails and only the memory below tells.
let atImport;
try {
  const out = new Deno.Command("/bin/cat", { args: [`/proc/${Deno.pid}/cgroup`] }).outputSync();
  atImport = out.success ? new TextDecoder().decode(out.stdout) : "unreadable: cat failed";
} catch (e) {
  atImport = `unreadable: ${e?.name}`;
}
// Touched at import time, so charged to the memory cgroup the process is in at that moment.
const ballast = new Uint8Array(64 << 20).fill(1);

export const where = { handler: () => ({ cgroup: atImport, ballast: ballast.length }) };
