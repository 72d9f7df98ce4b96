// Breaches of each resource limit (crates/sandbox/tests/limits.rs).
export const ok = { handler: () => ({ ok: true }) };

// ArrayBuffers live outside the V8 heap, so the heap flag does not stop this; the cgroup does.
export const hog = {
  handler: () => {
    const keep = [];
    while (true) {
      const b = new Uint8Array(1 << 20);
      b.fill(1);
      keep.push(b);
    }
  },
};

export const spin = {
  handler: () => {
    while (true) { /* burns CPU */ }
  },
};

export const sleep = {
  handler: async () => {
    await new Promise((r) => setTimeout(r, 60_000));
    return { slept: true };
  },
};

const MIB = new Uint8Array(1 << 20).fill(120);

// Content-Length known up front: refused before any byte.
export const big = {
  handler: () => new Response(new Uint8Array(8 << 20)),
};

// Streamed without a length: cut when it passes the cap.
export const bigStream = {
  handler: () => {
    let n = 0;
    const body = new ReadableStream({
      pull(c) {
        if (n++ === 64) return c.close();
        c.enqueue(MIB);
      },
    });
    return new Response(body);
  },
};

export const workers = {
  handler: async () => {
    const src = "self.onmessage = () => {}; setInterval(() => {}, 1000);";
    const url = URL.createObjectURL(new Blob([src], { type: "application/javascript" }));
    const all = [];
    for (let i = 0; i < 400; i++) all.push(new Worker(url, { type: "module" }));
    await new Promise((r) => setTimeout(r, 2000));
    return { workers: all.length };
  },
};
