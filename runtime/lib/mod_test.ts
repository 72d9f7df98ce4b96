import { ABI_VERSION, endpoint, type Infer, manifest, MANIFEST_TAG, v } from "./mod.ts";

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
  const m = manifest({ endpoints: [{ name: "greet", method: "GET" }] });
  assertEquals(m.$type, MANIFEST_TAG);
  assertEquals(m.endpoints, [{ name: "greet", method: "GET" }]);
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
