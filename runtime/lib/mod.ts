/**
 * `@at-run/runtime`: the small library bundle authors write against (bundle ABI v1, see
 * docs/bundle-abi.md). Everything here builds plain objects; the runtime shim of at-rund needs
 * nothing from this module at run time, so a bundle written by hand to the ABI works the same.
 *
 * Owns: `manifest()`, `endpoint()`, `task()` and the schema helpers `v`. Must not: touch Deno
 * APIs or need any permission (it is bundled into untrusted code and runs with whatever it was
 * given, and `at-run build` evaluates it with no permissions at all).
 *
 * `at-run build` reads what a module declares: the `manifest()` export (permissions, limits,
 * crons), every endpoint export (name = export name, `method`, `input.toJSON()`, `description`,
 * `example`) and every `task()` export.
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
  /** Queues a run of one of this bundle's tasks (this same version); see {@link Enqueue}. */
  enqueue: Enqueue;
}

/** Options of `ctx.enqueue`. */
export interface EnqueueOptions {
  /** Run no earlier than this many milliseconds from now. */
  delayMs?: number;
  /** Runs of one task with the same key are one job (1 to 256 characters). */
  idempotencyKey?: string;
}

/** A job as `ctx.enqueue` answers it. */
export interface Enqueued {
  id: number;
  /** `false`: a job with the same idempotency key existed, and this is it. */
  created: boolean;
  state: "queued" | "running" | "succeeded" | "dead" | "cancelled";
}

/**
 * Queues a run of `task` with `payload` (any JSON) through the runner. Rejects with an `Error`
 * whose `name` is the runner's error name (`TaskNotFound`, `PayloadTooLarge`,
 * `JobQuotaExceeded`, `JobsDisabled`, ...) and whose message says what to do.
 */
export type Enqueue = (task: string, payload?: unknown, options?: EnqueueOptions) => Promise<Enqueued>;

/** What a task's handler receives besides its payload. */
export interface TaskContext {
  /** Name of the task being run. */
  task: string;
  /** Queues a further job, as `Context.enqueue`. */
  enqueue: Enqueue;
}

/** HTTP methods an endpoint may declare (`ANY` = every method, the default). */
export type Method = "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" | "ANY";

/** An endpoint as the ABI defines it. */
export interface Endpoint<I = unknown> {
  method?: Method;
  input?: Schema<I>;
  handler: (input: I, ctx: Context) => unknown;
  /** One line for people reading the manifest. */
  description?: string;
  /** A valid sample input; `at-run test` calls the deployed endpoint with it. */
  example?: I;
}

/**
 * Declares an endpoint; export it under the endpoint's name. Returns the ABI object (`handler`,
 * plus `method`, `input`, `description`, `example` when given). The handler returns a `Response`
 * or any JSON-serialisable value (`undefined` = 204).
 */
export function endpoint<I = unknown>(def: Endpoint<I>): Endpoint<I> {
  if (typeof def?.handler !== "function") throw new TypeError("endpoint(): handler must be a function");
  const out: Endpoint<I> = { handler: def.handler };
  if (def.method !== undefined) out.method = def.method;
  if (def.input !== undefined) out.input = def.input;
  if (def.description !== undefined) out.description = def.description;
  if (def.example !== undefined) out.example = def.example;
  return out;
}

/** Marker that `task()` puts on its result: the shim never serves such an export over HTTP. */
export const TASK_TAG = "dev.atrund.task";

/** A background task: declared in the manifest now, run by the runner's jobs later. */
export interface Task<I = unknown> {
  readonly $type: typeof TASK_TAG;
  handler: (input: I, ctx: TaskContext) => unknown;
  /** How many runs of this task may be in flight at once. */
  concurrency?: number;
  /** Anyone may queue a run (dev.atrund.enqueueJob without the author's token). */
  public?: boolean;
  /** Wall clock of one run in ms, instead of the bundle's `limits.timeoutMs`. */
  timeoutMs?: number;
}

/** Declares a background task; export it under the task's name. */
export function task<I = unknown>(
  def: {
    handler: (input: I, ctx: TaskContext) => unknown;
    concurrency?: number;
    public?: boolean;
    timeoutMs?: number;
  },
): Task<I> {
  if (typeof def?.handler !== "function") throw new TypeError("task(): handler must be a function");
  const out: Task<I> = { $type: TASK_TAG, handler: def.handler };
  if (def.concurrency !== undefined) out.concurrency = def.concurrency;
  if (def.public !== undefined) out.public = def.public;
  if (def.timeoutMs !== undefined) out.timeoutMs = def.timeoutMs;
  return out;
}

/** Marker that `manifest()` puts on its result, so the build tool can find it. */
export const MANIFEST_TAG = "dev.atrund.manifest";

/** What a bundle asks of the runner (see the `dev.atrund.bundle` lexicon). */
export interface ManifestInput {
  permissions?: {
    /** `host:port` the bundle may reach with fetch (a bare `host` means port 443 only). */
    net?: string[];
    /** Paths relative to the bundle's data dir. */
    read?: string[];
    write?: string[];
    run?: string[];
    ffi?: boolean;
    sys?: boolean;
  };
  limits?: { memoryMib?: number; timeoutMs?: number; cpuMs?: number; concurrency?: number };
  crons?: { schedule: string; task: string }[];
}

/**
 * Declares the bundle's permissions, limits and crons; export the result under any name (e.g.
 * `export const config = manifest({...})`). Endpoints and tasks are not listed here: `at-run
 * build` takes them from the exports.
 */
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

/** Options every leaf schema takes. */
interface Common<T> {
  /** A sample value: goes into the JSON Schema's `examples`, used by `at-run test`. */
  example?: T;
  description?: string;
}

function meta<T>(base: Record<string, unknown>, o: Common<T> | undefined): Record<string, unknown> {
  const out = { ...base };
  if (o?.description !== undefined) out.description = o.description;
  if (o?.example !== undefined) out.examples = [o.example];
  return out;
}

export interface StringOptions extends Common<string> {
  minLength?: number;
  maxLength?: number;
  /** A regular expression the whole string must match. */
  pattern?: string;
}

export interface NumberOptions extends Common<number> {
  min?: number;
  max?: number;
  integer?: boolean;
}

type Shape = Record<string, Schema<unknown>>;
type ObjectOf<S extends Shape> =
  & { [K in keyof S as S[K] extends { optional: true } ? never : K]: Infer<S[K]> }
  & { [K in keyof S as S[K] extends { optional: true } ? K : never]?: Infer<S[K]> };

function numberSchema(o: NumberOptions | undefined, fromString: boolean): Schema<number> {
  const type = o?.integer ? "integer" : "number";
  return {
    validate(value) {
      let n = value;
      if (fromString && typeof value === "string" && value.trim() !== "") n = Number(value);
      if (typeof n !== "number" || !Number.isFinite(n)) {
        return bad("", `must be ${fromString ? "a numeric string" : `a ${type}`}, got ${describe(value)}`);
      }
      if (o?.integer && !Number.isInteger(n)) return bad("", "must be an integer");
      if (o?.min !== undefined && n < o.min) return bad("", `must be at least ${o.min}`);
      if (o?.max !== undefined && n > o.max) return bad("", `must be at most ${o.max}`);
      return ok;
    },
    toJSON() {
      const s: Record<string, unknown> = fromString
        ? { type: "string", format: type === "integer" ? "integer" : "number" }
        : { type };
      if (o?.min !== undefined) s.minimum = o.min;
      if (o?.max !== undefined) s.maximum = o.max;
      const m = meta(s, undefined);
      if (o?.description !== undefined) m.description = o.description;
      if (o?.example !== undefined) m.examples = [fromString ? String(o.example) : o.example];
      return m;
    },
  };
}

/** Schema helpers. Objects allow extra keys; failures name the first bad field. */
export const v = {
  string(o?: StringOptions): Schema<string> {
    const re = o?.pattern !== undefined ? new RegExp(`^(?:${o.pattern})$`) : undefined;
    return {
      validate(value) {
        if (typeof value !== "string") return bad("", `must be a string, got ${describe(value)}`);
        if (o?.minLength !== undefined && value.length < o.minLength) {
          return bad("", `must be at least ${o.minLength} characters`);
        }
        if (o?.maxLength !== undefined && value.length > o.maxLength) {
          return bad("", `must be at most ${o.maxLength} characters`);
        }
        if (re && !re.test(value)) return bad("", `must match ${o?.pattern}`);
        return ok;
      },
      toJSON() {
        const s: Record<string, unknown> = { type: "string" };
        if (o?.minLength !== undefined) s.minLength = o.minLength;
        if (o?.maxLength !== undefined) s.maxLength = o.maxLength;
        if (o?.pattern !== undefined) s.pattern = o.pattern;
        return meta(s, o);
      },
    };
  },
  /** A JSON number (POST bodies). */
  number: (o?: NumberOptions): Schema<number> => numberSchema(o, false),
  /** A number written as a string, as query parameters are (`?size=64`); parse it in the handler. */
  numeric: (o?: NumberOptions): Schema<string> => numberSchema(o, true) as unknown as Schema<string>,
  boolean(o?: Common<boolean>): Schema<boolean> {
    return {
      validate: (value) => typeof value === "boolean" ? ok : bad("", `must be a boolean, got ${describe(value)}`),
      toJSON: () => meta({ type: "boolean" }, o),
    };
  },
  /** One of the given strings. */
  enum<const T extends readonly string[]>(values: T, o?: Common<T[number]>): Schema<T[number]> {
    return {
      validate: (value) =>
        typeof value === "string" && values.includes(value)
          ? ok
          : bad("", `must be one of ${values.map((x) => JSON.stringify(x)).join(", ")}`),
      toJSON: () => meta({ type: "string", enum: [...values] }, o),
    };
  },
  array<T>(inner: Schema<T>, o?: Common<T[]> & { maxItems?: number }): Schema<T[]> {
    return {
      validate(value) {
        if (!Array.isArray(value)) return bad("", `must be an array, got ${describe(value)}`);
        if (o?.maxItems !== undefined && value.length > o.maxItems) {
          return bad("", `must have at most ${o.maxItems} items`);
        }
        for (let i = 0; i < value.length; i++) {
          const r = inner.validate(value[i]);
          if (!r.ok) return bad(r.field === "" ? `${i}` : `${i}.${r.field}`, r.message);
        }
        return ok;
      },
      toJSON() {
        const s: Record<string, unknown> = { type: "array", items: inner.toJSON() };
        if (o?.maxItems !== undefined) s.maxItems = o.maxItems;
        return meta(s, o);
      },
    };
  },
  optional<T>(inner: Schema<T>): Schema<T | undefined> & { optional: true } {
    return {
      optional: true,
      validate: (value) => value === undefined ? ok : inner.validate(value),
      toJSON: () => inner.toJSON(),
    };
  },
  object<S extends Shape>(shape: S, o?: Common<ObjectOf<S>>): Schema<ObjectOf<S>> {
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
        return meta({ type: "object", properties, required }, o);
      },
    };
  },
};
