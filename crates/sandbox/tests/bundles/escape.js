// Each handler tries one escape and reports the error name (or the data, if it got out).
async function attempt(f) {
  try {
    return { leaked: String(await f()) };
  } catch (e) {
    return { error: e?.name ?? "unknown", message: String(e?.message ?? "") };
  }
}

const outside = ["/etc", "hostname"].join("/");

export const readFile = { handler: () => attempt(() => Deno.readTextFile(outside)) };
export const envHome = { handler: () => attempt(() => Deno.env.get("HOME")) };
export const fetchHost = { handler: () => attempt(() => fetch("http://127.0.0.1:8081/").then((r) => r.status)) };
// A literal specifier: Deno's module loader would allow it if the bundle were the main module.
export const literalImport = {
  handler: () => attempt(() => import("file:///etc/hostname", { with: { type: "text" } }).then((m) => m.default)),
};
export const allowedRead = { handler: () => attempt(() => Deno.readTextFile("in.txt")) };
