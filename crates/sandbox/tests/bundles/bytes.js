// Binary and streamed responses.
export const bytes = {
  handler: () => {
    const all = new Uint8Array(256);
    for (let i = 0; i < 256; i++) all[i] = i;
    return new Response(all, { headers: { "content-type": "application/octet-stream" } });
  },
};

export const stream = {
  handler: () => {
    let n = 0;
    const body = new ReadableStream({
      async pull(c) {
        if (n === 5) return c.close();
        await new Promise((r) => setTimeout(r, 10));
        c.enqueue(new TextEncoder().encode(`chunk${n++};`));
      },
    });
    return new Response(body, { status: 201, headers: { "x-kind": "stream", "x-atrund-error": "EndpointNotFound" } });
  },
};

// The caller's body streamed back as it arrives: the answer starts before the body has ended.
export const pipe = {
  handler: (_input, ctx) =>
    new Response(ctx.request.body, { headers: { "content-type": "application/octet-stream" } }),
};

export const boom = {
  handler: () => {
    throw new Error("secret detail /etc/shadow");
  },
};

// A rejected promise, a result JSON cannot encode, and nothing at all: the shim answers each
// whether the handler is synchronous or not.
export const asyncBoom = {
  handler: async () => {
    await null;
    throw new TypeError("secret detail /etc/shadow");
  },
};

export const cyclic = {
  handler: () => {
    const a = {};
    a.self = a;
    return a;
  },
};

export const nothing = {
  handler: () => undefined,
};

export const echo = {
  handler: async (input, ctx) => ({
    input: input ?? null,
    method: ctx.request.method,
    path: new URL(ctx.request.url).pathname,
    search: new URL(ctx.request.url).search,
    rest: ctx.rest,
    endpoint: ctx.endpoint,
    body: ctx.request.body ? await ctx.request.text() : null,
    internal: ctx.request.headers.get("x-atrund-endpoint"),
    query: ctx.query.getAll("x"),
    sameRequest: ctx.request === ctx.request,
    requestReadOnly: (() => {
      try {
        ctx.request = null;
        return false;
      } catch (e) {
        return e instanceof TypeError;
      }
    })(),
  }),
};

export const typed = {
  method: "POST",
  input: {
    validate: (v) =>
      typeof v?.text === "string" ? { ok: true } : { ok: false, field: "text", message: "must be a string" },
  },
  handler: ({ text }) => ({ text }),
};

export const spin = {
  handler: () => {
    while (true) { /* blocks the event loop */ }
  },
};

export const notAnEndpoint = 42;
// Shaped like an endpoint, but the default export is never one (docs/bundle-abi.md).
export default { handler: () => ({ served: "default" }) };

export const oom = {
  handler: () => {
    const keep = [];
    while (true) keep.push(new Array(1e6).fill(1.5));
  },
};

// Tasks (`task()` of @at-run/runtime tags them): run for jobs under `/t/`, never served as
// endpoints.
export const double = { $type: "dev.atrund.task", handler: (input) => ({ twice: input.n * 2 }) };
export const slowTask = {
  $type: "dev.atrund.task",
  handler: async () => {
    await new Promise((r) => setTimeout(r, 5));
    return "done";
  },
};
export const brokenTask = {
  $type: "dev.atrund.task",
  handler: () => {
    throw new RangeError("secret detail");
  },
};
export const nothingTask = { $type: "dev.atrund.task", handler: () => {} };
