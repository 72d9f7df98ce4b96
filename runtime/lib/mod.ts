/**
 * `@at-run/runtime`: the small library bundle authors write against (bundle ABI v1, see
 * docs/bundle-abi.md). Everything here builds plain objects; the runtime shim of at-rund needs
 * nothing from this module at run time, so a bundle written by hand to the ABI works the same.
 *
 * Owns: `manifest()`, `endpoint()` and the schema helpers `v`. Must not: touch Deno APIs or
 * need any permission (it is bundled into untrusted code and runs with whatever it was given).
 *
 * @module
 */

/** The bundle ABI this library targets. Export it from a bundle as `atrundAbi` to pin it. */
export const ABI_VERSION = 1;

/** Result of a schema check: `ok`, or the first failing field (dotted path, "" = the value). */
export type Validation = { ok: true } | { ok: false; field: string; message: string };

/** A schema: the shim calls `validate` on the endpoint input; `toJSON` is its JSON Schema. */
export interface Schema<T> {
  validate(value: unknown): Validation;
  toJSON(): Record<string, unknown>;
  /** Type-level only: the type a valid value has. */
  readonly _type?: T;
  /** True for `v.optional(...)`: the field may be missing in an object. */
  readonly optional?: boolean;
}

/** The TypeScript type a schema accepts. */
export type Infer<S> = S extends Schema<infer T> ? T : never;

/** What a handler receives besides the input. */
export interface Context {
  /** The caller's request: method, headers, body; URL path is the rest path, plus the query. */
  request: Request;
  /** Name of the endpoint being called (its export name). */
  endpoint: string;
  /** Path after the endpoint, "" or starting with "/". */
  rest: string;
  /** The query string of the call. */
  query: URLSearchParams;
}

/** An endpoint as the ABI defines it. */
export interface Endpoint<I = unknown> {
  method?: "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" | "ANY";
  input?: Schema<I>;
  handler: (input: I, ctx: Context) => unknown;
}

/** Declares an endpoint; export it under the endpoint's name. Returns exactly the ABI object. */
export function endpoint<I = unknown>(def: Endpoint<I>): Endpoint<I> {
  const out: Endpoint<I> = { handler: def.handler };
  if (def.method !== undefined) out.method = def.method;
  if (def.input !== undefined) out.input = def.input;
  return out;
}

/** Marker that `manifest()` puts on its result, so the build tool can find it. */
export const MANIFEST_TAG = "dev.atrund.manifest";

/** The manifest object (see the `dev.atrund.bundle` lexicon). */
export interface ManifestInput {
  permissions?: {
    net?: string[];
    read?: string[];
    write?: string[];
    run?: string[];
    ffi?: boolean;
    sys?: boolean;
  };
  limits?: { memoryMib?: number; timeoutMs?: number; cpuMs?: number; concurrency?: number };
  endpoints?: { name: string; method?: string; input?: unknown; description?: string }[];
  tasks?: { name: string; concurrency?: number }[];
  crons?: { schedule: string; task: string }[];
}

/** Declares the bundle's manifest; returns it tagged with `$type`. */
export function manifest<M extends ManifestInput>(obj: M): M & { $type: typeof MANIFEST_TAG } {
  return { ...obj, $type: MANIFEST_TAG };
}

const ok: Validation = { ok: true };

function bad(field: string, message: string): Validation {
  return { ok: false, field, message };
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "undefined" ? "missing" : `a ${typeof value}`;
}

function leaf<T>(type: string, check: (value: unknown) => boolean): Schema<T> {
  return {
    validate: (value) => check(value) ? ok : bad("", `must be a ${type}, got ${describe(value)}`),
    toJSON: () => ({ type }),
  };
}

type Shape = Record<string, Schema<unknown>>;
type ObjectOf<S extends Shape> =
  & { [K in keyof S as S[K] extends { optional: true } ? never : K]: Infer<S[K]> }
  & { [K in keyof S as S[K] extends { optional: true } ? K : never]?: Infer<S[K]> };

/** Schema helpers. Objects allow extra keys; failures name the first bad field. */
export const v = {
  string: (): Schema<string> => leaf("string", (x) => typeof x === "string"),
  number: (): Schema<number> => leaf("number", (x) => typeof x === "number" && Number.isFinite(x)),
  boolean: (): Schema<boolean> => leaf("boolean", (x) => typeof x === "boolean"),
  optional<T>(inner: Schema<T>): Schema<T | undefined> & { optional: true } {
    return {
      optional: true,
      validate: (value) => value === undefined ? ok : inner.validate(value),
      toJSON: () => inner.toJSON(),
    };
  },
  object<S extends Shape>(shape: S): Schema<ObjectOf<S>> {
    return {
      validate(value) {
        if (typeof value !== "object" || value === null || Array.isArray(value)) {
          return bad("", `must be an object, got ${describe(value)}`);
        }
        for (const [key, schema] of Object.entries(shape)) {
          const field = (value as Record<string, unknown>)[key];
          if (field === undefined && !schema.optional) return bad(key, "is required");
          const r = schema.validate(field);
          if (!r.ok) return bad(r.field === "" ? key : `${key}.${r.field}`, r.message);
        }
        return ok;
      },
      toJSON() {
        const properties: Record<string, unknown> = {};
        const required: string[] = [];
        for (const [key, schema] of Object.entries(shape)) {
          properties[key] = schema.toJSON();
          if (!schema.optional) required.push(key);
        }
        return { type: "object", properties, required };
      },
    };
  },
};
