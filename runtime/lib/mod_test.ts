import { ABI_VERSION, endpoint, type Infer, manifest, MANIFEST_TAG, task, TASK_TAG, v } from "./mod.ts";

function assertEquals(actual: unknown, expected: unknown): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`expected ${e}, got ${a}`);
}

Deno.test("endpoint returns exactly the ABI object", () => {
  const handler = () => "hi";
  const ep = endpoint({ method: "GET", handler });
  assertEquals(Object.keys(ep), ["handler", "method"]);
  if (ep.handler !== handler) throw new Error("handler not kept");
  assertEquals(Object.keys(endpoint({ handler })), ["handler"]);
  assertEquals(ABI_VERSION, 1);
});

Deno.test("manifest is tagged and keeps its fields", () => {
  const m = manifest({ permissions: { net: ["example.com:443"] }, limits: { timeoutMs: 500 } });
  assertEquals(m.$type, MANIFEST_TAG);
  assertEquals(m.permissions, { net: ["example.com:443"] });
  assertEquals(m.limits, { timeoutMs: 500 });
});

Deno.test("schemas accept valid input and name the bad field", () => {
  const s = v.object({
    text: v.string(),
    count: v.optional(v.number()),
    opts: v.object({ loud: v.boolean() }),
  });
  assertEquals(s.validate({ text: "a", opts: { loud: true } }), { ok: true });
  assertEquals(s.validate({ text: "a", count: 2, opts: { loud: false }, extra: 1 }), { ok: true });
  assertEquals(s.validate({ opts: { loud: true } }), { ok: false, field: "text", message: "is required" });
  assertEquals(s.validate({ text: 1, opts: { loud: true } }), {
    ok: false,
    field: "text",
    message: "must be a string, got a number",
  });
  assertEquals(s.validate({ text: "a", count: "x", opts: { loud: true } }).ok, false);
  assertEquals(s.validate({ text: "a", opts: { loud: "yes" } }), {
    ok: false,
    field: "opts.loud",
    message: "must be a boolean, got a string",
  });
  for (const bad of [null, undefined, [], "x", 3]) assertEquals(s.validate(bad).ok, false);
  assertEquals(v.number().validate(NaN).ok, false);
});

Deno.test("schemas describe themselves as JSON Schema", () => {
  const s = v.object({ text: v.string(), n: v.optional(v.number()) });
  assertEquals(s.toJSON(), {
    type: "object",
    properties: { text: { type: "string" }, n: { type: "number" } },
    required: ["text"],
  });
});

Deno.test("inferred input types follow the schema", () => {
  const s = v.object({ a: v.string(), b: v.optional(v.number()) });
  const ep = endpoint({
    input: s,
    handler: (input: Infer<typeof s>) => input.a.toUpperCase() + (input.b ?? 0),
  });
  const value: Infer<typeof s> = { a: "x" };
  assertEquals(ep.handler(value, {} as never), "X0");
});

Deno.test("endpoint keeps description and example; a missing handler is refused", () => {
  const ep = endpoint({ method: "POST", description: "d", example: { a: 1 }, handler: () => 1 });
  assertEquals(Object.keys(ep), ["handler", "method", "description", "example"]);
  let threw = false;
  try {
    endpoint({} as never);
  } catch {
    threw = true;
  }
  assertEquals(threw, true);
});

Deno.test("task is tagged so the shim never serves it", () => {
  const t = task({ handler: () => {}, concurrency: 2 });
  assertEquals(t.$type, TASK_TAG);
  assertEquals(t.concurrency, 2);
  assertEquals(Object.keys(task({ handler: () => {} })), ["$type", "handler"]);
});

Deno.test("string, number, enum and array options are checked and described", () => {
  const s = v.string({ minLength: 2, maxLength: 4, pattern: "[a-z]+", example: "abc" });
  assertEquals(s.validate("abc"), { ok: true });
  assertEquals(s.validate("a"), { ok: false, field: "", message: "must be at least 2 characters" });
  assertEquals(s.validate("abcde").ok, false);
  assertEquals(s.validate("AB"), { ok: false, field: "", message: "must match [a-z]+" });
  assertEquals(s.toJSON(), { type: "string", minLength: 2, maxLength: 4, pattern: "[a-z]+", examples: ["abc"] });

  const n = v.number({ min: 1, max: 10, integer: true });
  assertEquals(n.validate(5), { ok: true });
  assertEquals(n.validate(0), { ok: false, field: "", message: "must be at least 1" });
  assertEquals(n.validate(2.5), { ok: false, field: "", message: "must be an integer" });
  assertEquals(n.validate("5").ok, false);
  assertEquals(n.toJSON(), { type: "integer", minimum: 1, maximum: 10 });

  const q = v.numeric({ max: 512, example: 64 });
  assertEquals(q.validate("64"), { ok: true });
  assertEquals(q.validate("1024"), { ok: false, field: "", message: "must be at most 512" });
  assertEquals(q.validate("x").ok, false);
  assertEquals(q.validate("").ok, false);
  assertEquals(q.toJSON(), { type: "string", format: "number", maximum: 512, examples: ["64"] });

  const e = v.enum(["png", "svg"] as const);
  assertEquals(e.validate("svg"), { ok: true });
  assertEquals(e.validate("gif"), { ok: false, field: "", message: 'must be one of "png", "svg"' });
  assertEquals(e.toJSON(), { type: "string", enum: ["png", "svg"] });

  const a = v.object({ tags: v.array(v.string(), { maxItems: 2 }) });
  assertEquals(a.validate({ tags: ["x", "y"] }), { ok: true });
  assertEquals(a.validate({ tags: ["x", 1] }), { ok: false, field: "tags.1", message: "must be a string, got a number" });
  assertEquals(a.validate({ tags: ["x", "y", "z"] }), { ok: false, field: "tags", message: "must have at most 2 items" });
  assertEquals(v.boolean({ example: true }).toJSON(), { type: "boolean", examples: [true] });
});
