// Says on stdout when its top-level code runs (crates/sandbox/tests/none.rs).
console.log("bundle top-level ran");
export const ok = { handler: () => ({ ok: true }) };
