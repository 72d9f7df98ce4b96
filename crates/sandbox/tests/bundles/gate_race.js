// Races the connect gate of `none` instances (crates/sandbox/tests/connect_gate.rs). The main
// thread calls connect(N, addr) over and over while a Worker flips descriptor N between a TCP
// socket and a Unix socket (dup2) and the address between the egress proxy's and a Unix socket's
// path. A gate that checked the call and then let the kernel continue it would re-read both and
// now and then connect the Unix socket. Needs `ffi`.
const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "pointer", "u32"], result: "i32" },
  dup2: { parameters: ["i32", "i32"], result: "i32" },
  malloc: { parameters: ["usize"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
};
const LEN = 110; // sizeof(struct sockaddr_un); also more than a sockaddr_in needs

function inet(port) {
  const a = new Uint8Array(LEN);
  const v = new DataView(a.buffer);
  v.setUint16(0, 2 /* AF_INET */, true);
  v.setUint16(2, Number(port), false);
  a.set([127, 0, 0, 1], 4);
  return a;
}
function unixAddr(path) {
  const a = new Uint8Array(LEN);
  new DataView(a.buffer).setUint16(0, 1 /* AF_UNIX */, true);
  a.set(new TextEncoder().encode(path), 2);
  return a;
}

const WORKER = `
const lib = Deno.dlopen("libc.so.6", { dup2: { parameters: ["i32", "i32"], result: "i32" } }).symbols;
self.onmessage = ({ data }) => {
  const { ptr, n, tcp, unix, inet, un, ms } = data;
  const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(BigInt(ptr)), inet.length));
  const end = Date.now() + ms;
  let flips = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 64; i++) {
      lib.dup2(unix, n); view.set(un);
      lib.dup2(tcp, n); view.set(inet);
    }
    flips += 64;
  }
  self.postMessage(flips);
};
self.postMessage("ready");
`;

// Microseconds per connect + close, over n rounds (the connect gate's cost): to 127.0.0.1:port,
// or with `path` to that Unix path (refused by the gate; without it, by the kernel: ENOENT).
export const connects = {
  handler: ({ port, path, n }) => {
    const c = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
    const close = Deno.dlopen("libc.so.6", { close: { parameters: ["i32"], result: "i32" } }).symbols.close;
    const mem = c.malloc(BigInt(LEN));
    new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(mem, LEN)).set(path ? unixAddr(path) : inet(port));
    let connected = 0;
    const t = performance.now();
    for (let i = 0; i < Number(n); i++) {
      const fd = c.socket(path ? 1 : 2, 1, 0);
      if (c.connect(fd, mem, path ? LEN : 16) === 0) connected++;
      close(fd);
    }
    return { us: ((performance.now() - t) * 1000) / Number(n), connected };
  },
};

export const race = {
  handler: async ({ path, port, ms }) => {
    const c = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
    const errno = () => new Deno.UnsafePointerView(c.__errno_location()).getInt32();
    const tcp = c.socket(2, 1, 0);
    const unix = c.socket(1, 1, 0);
    const n = 500; // the descriptor number the worker keeps re-pointing
    c.dup2(tcp, n);
    const mem = c.malloc(BigInt(LEN));
    const addrIn = inet(port);
    const addrUn = unixAddr(path);
    new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(mem, LEN)).set(addrIn);
    const url = URL.createObjectURL(new Blob([WORKER], { type: "application/javascript" }));
    const w = new Worker(url, { type: "module" });
    const messages = [];
    let wake;
    w.onmessage = (e) => { messages.push(e.data); wake?.(); };
    const next = async () => {
      while (!messages.length) await new Promise((r) => (wake = r));
      return messages.shift();
    };
    await next(); // "ready"
    w.postMessage({ ptr: String(Deno.UnsafePointer.value(mem)), n, tcp, unix, inet: addrIn, un: addrUn, ms: Number(ms) });
    const counts = {};
    let calls = 0;
    const end = Date.now() + Number(ms);
    while (Date.now() < end) {
      const rc = c.connect(n, mem, LEN);
      const e = rc < 0 ? errno() : 0;
      counts[e] = (counts[e] ?? 0) + 1;
      calls++;
    }
    const flips = await next();
    w.terminate();
    return { calls, flips, counts };
  },
};
