// A media-style bundle: every kind of response an endpoint can give.
//   GET  info?text=...            JSON from query parameters
//   POST upload {name, tags}      JSON body in, 201 + JSON out
//   GET  thumb?size=32&color=...  binary image with cache headers (and 304 on If-None-Match)
//   GET  go?to=thumb              an HTML page that redirects (302 + Location)
//   task cleanup                  a background task: declared in the manifest, never served over HTTP
import { endpoint, manifest, task, v } from "@at-run/runtime";
import { parseHex, solidBmp } from "./lib/image.ts";
import { esc } from "./lib/html.ts";

export const config = manifest({ limits: { timeoutMs: 5000, memoryMib: 128 } });

export const info = endpoint({
  method: "GET",
  description: "Counts the characters and words of ?text=",
  input: v.object({ text: v.string({ maxLength: 10000, example: "hello media world" }) }),
  handler: ({ text }) => ({ length: text.length, words: text.split(/\s+/).filter(Boolean).length }),
});

export const upload = endpoint({
  method: "POST",
  description: "Accepts a media item's metadata",
  input: v.object({
    name: v.string({ minLength: 1, maxLength: 100 }),
    tags: v.optional(v.array(v.string({ maxLength: 32 }), { maxItems: 10 })),
  }),
  example: { name: "cat.bmp", tags: ["cat"] },
  handler: ({ name, tags }) =>
    Response.json({ id: crypto.randomUUID(), name, tags: tags ?? [] }, { status: 201 }),
});

export const thumb = endpoint({
  method: "GET",
  description: "A solid-colour BMP thumbnail, cached for a year",
  input: v.object({
    size: v.optional(v.numeric({ integer: true, min: 1, max: 256, example: 16 })),
    color: v.optional(v.string({ pattern: "[0-9a-fA-F]{6}", example: "ff8800" })),
  }),
  handler: ({ size, color }, ctx) => {
    const n = Number(size ?? "32");
    const hex = (color ?? "336699").toLowerCase();
    const etag = `"bmp-${n}-${hex}"`;
    const headers = {
      "cache-control": "public, max-age=31536000, immutable",
      "etag": etag,
    };
    if (ctx.request.headers.get("if-none-match") === etag) {
      return new Response(null, { status: 304, headers });
    }
    return new Response(solidBmp(n, parseHex(hex)), {
      headers: { ...headers, "content-type": "image/bmp" },
    });
  },
});

export const go = endpoint({
  method: "GET",
  description: "Redirects to another endpoint of this bundle, with an HTML fallback page",
  input: v.object({ to: v.optional(v.enum(["thumb", "info"], { example: "thumb" })) }),
  handler: ({ to }) => {
    const target = `./${to ?? "thumb"}`;
    const html = `<!doctype html><title>Moved</title><p>See <a href="${esc(target)}">${esc(target)}</a>.</p>`;
    return new Response(html, {
      status: 302,
      headers: { "location": target, "content-type": "text/html; charset=utf-8" },
    });
  },
});

export const cleanup = task({
  concurrency: 1,
  handler: () => {
    // Runs when the runner's jobs start it (declared now; not callable over HTTP).
  },
});
