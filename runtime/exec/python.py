"""at-run-exec for Python: the Python runtime shim of at-rund, bundle ABI v1 (docs/bundle-abi.md,
docs/runtimes.md). The same wire contract as the Deno shim (runtime/exec/main.ts): `go` on stdin,
the ready line, HTTP/1.1 on a Unix socket, `/e/<endpoint>` calls and `/t/<task>` runs.

Owns: loading the bundle (one Python module, or a zip of modules with main.py at its root,
imported with zipimport: pure Python only), serving its endpoints and tasks, mapping input and
results, and reporting failures in a structured way. Must not: relay tracebacks or raw load
errors to callers, nor widen what the bundle may do (Python enforces nothing itself: the kernel
layer and the container are the whole boundary).

Standard library only (asyncio and a small HTTP/1.1 server): the interpreter runs isolated
(`-I -S -B`), with no site-packages. Usage: python3 -I -S -B python.py <bundle file> <socket>,
then `go\\n` on stdin; or, in a pre-warmed generic sandbox, python.py --generic <socket>, then
the bundle as a JSON line on stdin (`generic_main`).
"""

import asyncio
import importlib.machinery
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
import types
import zipimport
from urllib.parse import parse_qsl, unquote, urlsplit

ABI_VERSION = 1
CALL_PREFIX = "/e/"
TASK_PREFIX = "/t/"
ERROR_HEADER = "x-atrund-error"
RESERVED_PREFIX = "x-atrund-"
TASK_TAG = "dev.atrund.task"
RUNNER_URL = "http://runner.atrund.internal"
# at-rund is the only client; these bound what a confused one could make the shim hold.
MAX_LINE = 65536
MAX_HEADERS = 200
REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed", 502: "Bad Gateway"}


def signal(**o):
    sys.stdout.write(json.dumps({"atrund": o.pop("event"), **o}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def error_name(e):
    n = type(e).__name__
    return n if re.fullmatch(r"[A-Za-z]{1,40}", n) else "Error"


class Headers:
    """Case-insensitive, multi-valued, in order."""

    def __init__(self, items=()):
        if isinstance(items, dict):
            items = items.items()
        self.items = [(str(k), str(v)) for k, v in items]

    def get(self, k, default=None):
        k = k.lower()
        return next((v for n, v in self.items if n.lower() == k), default)

    def get_all(self, k):
        k = k.lower()
        return [v for n, v in self.items if n.lower() == k]

    def __contains__(self, k):
        return self.get(k) is not None

    def __iter__(self):
        return iter(self.items)


class Response:
    """What a handler returns to control status, headers and body: bytes, str, or an (async)
    iterable of bytes/str, streamed chunk by chunk."""

    def __init__(self, body=b"", status=200, headers=()):
        self.body, self.status, self.headers = body, status, Headers(headers)
        self.own = False

    @staticmethod
    def json(value, status=200, headers=()):
        h = Headers(headers)
        h.items.append(("content-type", "application/json"))
        return Response(dumps(value), status, h.items)


class Body:
    """A request body read from the connection on demand (Content-Length or chunked)."""

    def __init__(self, reader, length=0, chunked=False):
        self.reader, self.left, self.chunked = reader, length, chunked
        self.done = not chunked and not length

    async def chunks(self):
        while not self.done:
            if self.chunked:
                size = int((await self.reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readline()
                yield data
            else:
                data = await self.reader.read(min(self.left, 65536))
                if not data:
                    raise ConnectionError("body cut short")
                self.left -= len(data)
                self.done = self.left == 0
                yield data

    async def read(self):
        return b"".join([c async for c in self.chunks()])


class Request:
    """`ctx.request`: the caller's method, URL (on the caller's host), headers without reserved
    ones, and body."""

    def __init__(self, method, url, headers, body, text=None):
        self.method, self.url, self.headers = method, url, headers
        self._body, self._cache = body, text.encode() if text is not None else None

    async def body(self):
        if self._cache is None:
            self._cache = await self._body.read()
        return self._cache

    async def text(self):
        return (await self.body()).decode("utf-8", "replace")

    async def json(self):
        return json.loads(await self.body())

    def stream(self):
        return self._body.chunks()


def dumps(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def fail(status, error, message):
    r = Response(dumps({"error": error, "message": message}), status,
                 [("content-type", "application/json"), (ERROR_HEADER, error)])
    r.own = True
    return r


def export(mod, name):
    """The module attribute `name` as an accessor of its fields, or None: private names, modules
    and the default-like names are never exports."""
    if not name or name.startswith("_") or name == "default" or not hasattr(mod, name):
        return None
    v = getattr(mod, name)
    if isinstance(v, types.ModuleType):
        return None
    get = (lambda k: v.get(k)) if isinstance(v, dict) else (lambda k: getattr(v, k, None))
    return get if callable(get("handler")) else None


def is_task(get):
    return get("$type") == TASK_TAG or get("atrund_type") == TASK_TAG


def method_allowed(declared, method):
    if declared is None:
        return True
    d = str(declared).upper()
    return d in ("ANY", method) or (d == "GET" and method == "HEAD")


def is_json(ct):
    if not ct:
        return False
    m = ct.split(";")[0].strip().lower()
    return m == "application/json" or m.endswith("+json")


def query_object(pairs):
    out = {}
    for k, v in pairs:
        p = out.get(k)
        out[k] = v if p is None else (p + [v] if isinstance(p, list) else [p, v])
    return out


def enqueue(task, payload=None, delay_ms=None, idempotency_key=None):
    """`ctx.enqueue`: queues a run of one of this bundle's tasks (through the egress proxy, which
    answers the runner's reserved host itself). Blocking: call it from a sync handler, or with
    `await asyncio.to_thread(ctx.enqueue, ...)`."""
    import urllib.error
    import urllib.request
    if not isinstance(task, str) or task == "":
        raise TypeError("enqueue(): task must be the name of a task this bundle declares")
    body = json.dumps({"task": task, "payload": payload, "delayMs": delay_ms,
                       "idempotencyKey": idempotency_key}).encode()
    req = urllib.request.Request(RUNNER_URL + "/v1/enqueue", body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            j = json.loads(res.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            j = json.loads(e.read() or b"{}")
        except ValueError:
            j = {}
        raise RuntimeError(j.get("message") or f"enqueue(): the runner answered HTTP {e.code}") from None
    except OSError as e:
        raise RuntimeError(f"enqueue(): the runner could not be reached ({error_name(e)})") from None
    job = j.get("job") or {}
    return {"id": job.get("id"), "created": j.get("created") is True, "state": job.get("state")}


async def run_handler(handler, value, ctx):
    if inspect.iscoroutinefunction(handler):
        out = await handler(value, ctx)
    else:
        # A blocking handler keeps the loop free for other calls.
        out = await asyncio.to_thread(handler, value, ctx)
    if inspect.isawaitable(out):
        out = await out
    return out


async def call(mod, method, name, path, search, headers, body):
    get = export(mod, name)
    if get is None or is_task(get):
        return fail(404, "EndpointNotFound", f"this bundle has no endpoint '{name}'")
    if not method_allowed(get("method"), method):
        return fail(405, "MethodNotAllowed",
                    f"endpoint '{name}' accepts {str(get('method')).upper()}, not {method}")
    pairs = parse_qsl(search[1:], keep_blank_values=True) if search else []
    inner = Headers([(k, v) for k, v in headers if not k.lower().startswith(RESERVED_PREFIX)])
    scheme = "https" if headers.get("x-forwarded-proto") == "https" else "http"
    url = f"{scheme}://{headers.get('host', 'localhost')}{path}{search}"
    value, text = None, None
    if method in ("GET", "HEAD"):
        value = query_object(pairs)
    elif is_json(headers.get("content-type")):
        raw = await body.read()
        text = raw.decode("utf-8", "replace")
        if raw.strip():
            try:
                value = json.loads(raw)
            except ValueError:
                return fail(400, "InvalidInput", "the request body is not valid JSON")
    schema = get("input")
    validate = getattr(schema, "validate", None) if schema is not None else None
    if callable(validate):
        try:
            verdict = validate(value)
        except Exception:
            print(f"endpoint '{name}': input validator threw:", file=sys.stderr)
            traceback.print_exc()
            return fail(502, "BundleFailed",
                        f"the input validator of endpoint '{name}' failed; the runner's log has details")
        if not isinstance(verdict, dict) or verdict.get("ok") is not True:
            field = verdict.get("field", "") if isinstance(verdict, dict) else ""
            why = verdict.get("message", "is invalid") if isinstance(verdict, dict) else "is invalid"
            where = "input" if not field else f"input field '{field}'"
            return fail(400, "InvalidInput", f"{where} {why}")
    rest = unquote(path)
    ctx = types.SimpleNamespace(request=Request(method, url, inner, body, text), endpoint=name,
                                rest="" if rest in ("", "/") else rest, query=pairs, enqueue=enqueue)
    try:
        out = await run_handler(get("handler"), value, ctx)
        if isinstance(out, Response):
            return out
        if out is None:
            return Response(b"", 204)
        return Response(dumps(out), 200, [("content-type", "application/json")])
    except Exception as e:
        print(f"endpoint '{name}' threw:", file=sys.stderr)
        traceback.print_exc()
        return fail(502, "BundleFailed", f"endpoint '{name}' threw {error_name(e)}; the runner's log has details")


async def run_task(mod, method, name, body):
    get = export(mod, name)
    if get is None or not is_task(get):
        return fail(404, "EndpointNotFound", f"this bundle has no task '{name}'")
    if method != "POST":
        return fail(405, "MethodNotAllowed", f"a task is run with POST, not {method}")
    raw = await body.read()
    value = None
    if raw.strip():
        try:
            value = json.loads(raw)
        except ValueError:
            return fail(400, "InvalidInput", "the job's payload is not valid JSON")
    try:
        result = await run_handler(get("handler"), value, types.SimpleNamespace(task=name, enqueue=enqueue))
    except Exception as e:
        print(f"task '{name}' threw:", file=sys.stderr)
        traceback.print_exc()
        return fail(502, "BundleFailed", f"task '{name}' threw {error_name(e)}; the runner's log has details")
    try:
        return Response(dumps({"result": result}), 200, [("content-type", "application/json")])
    except (TypeError, ValueError):
        traceback.print_exc()
        return fail(502, "BundleFailed", f"task '{name}' returned a value that cannot be sent as JSON")


async def handle(mod, method, target, headers, body):
    q = target.find("?")
    path, search = (target, "") if q < 0 else (target[:q], target[q:])
    if mod is None and path != "/__atrund/ready":
        # A generic sandbox before its bundle: only the readiness probe answers.
        return fail(503, "NotReady", "this sandbox has no bundle yet")
    if path.startswith(TASK_PREFIX):
        return await run_task(mod, method, path[len(TASK_PREFIX):], body)
    if not path.startswith(CALL_PREFIX):
        if path == "/__atrund/ready":
            r = Response.json({"abi": ABI_VERSION})
            r.own = True
            return r
        return fail(404, "EndpointNotFound", "this is not a call of an endpoint")
    slash = path.find("/", len(CALL_PREFIX))
    name = path[len(CALL_PREFIX):] if slash < 0 else path[len(CALL_PREFIX):slash]
    return await call(mod, method, name, "/" if slash < 0 else path[slash:], search, headers, body)


async def write_response(w, r, head_only):
    status = int(r.status)
    hs = [(k, v) for k, v in r.headers if r.own or not k.lower().startswith(RESERVED_PREFIX)]
    hs = [(k, v) for k, v in hs if k.lower() not in ("content-length", "transfer-encoding", "connection")]
    body = r.body
    if isinstance(body, str):
        body = body.encode()
    fixed = isinstance(body, (bytes, bytearray, memoryview))
    if status in (204, 304):
        body, fixed = b"", True
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"] + [f"{k}: {v}" for k, v in hs]
    if fixed and status not in (204, 304):
        lines.append(f"content-length: {len(body)}")
    elif not fixed:
        lines.append("transfer-encoding: chunked")
    w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin1"))
    if head_only:
        await w.drain()
        return
    if fixed:
        w.write(body)
        await w.drain()
        return
    if hasattr(body, "__aiter__"):
        async for c in body:
            await write_chunk(w, c)
    else:
        it = iter(body)
        done = object()
        while (c := await asyncio.to_thread(next, it, done)) is not done:
            await write_chunk(w, c)
    w.write(b"0\r\n\r\n")
    await w.drain()


async def write_chunk(w, c):
    if isinstance(c, str):
        c = c.encode()
    if c:
        w.write(b"%x\r\n%s\r\n" % (len(c), c))
        await w.drain()


async def serve_conn(current, reader, writer):
    """Serves one connection; `current()` is the bundle module (None until a generic sandbox
    has one)."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            method, target, version = line.decode("latin1").rstrip("\r\n").split(" ", 2)
            raw = []
            while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                if len(raw) >= MAX_HEADERS:
                    raise ValueError("too many headers")
                k, _, v = h.decode("latin1").partition(":")
                raw.append((k.strip(), v.strip()))
            headers = Headers(raw)
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            body = Body(reader, int(headers.get("content-length", "0") or 0), chunked)
            try:
                r = await handle(current(), method, target, headers, body)
            except Exception:
                traceback.print_exc()
                r = fail(502, "BundleFailed", "the runtime shim failed; the runner's log has details")
            try:
                await write_response(writer, r, method == "HEAD")
            except Exception:
                traceback.print_exc()
                break  # a body that failed mid-stream: cut the connection, which at-rund reports
            async for _ in body.chunks():
                pass  # an unread request body, before the next request
            if version != "HTTP/1.1" or headers.get("connection", "").lower() == "close":
                break
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


def await_go():
    got = b""
    while len(got) < 3:
        b = os.read(0, 3 - len(got))
        if not b:
            break
        got += b
    # The bundle sees end of input.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return got == b"go\n"


def runtime_module():
    """`import atrund` in a bundle: Response, Headers, endpoint(), task()."""
    m = types.ModuleType("atrund")
    m.Response, m.Headers, m.ABI_VERSION = Response, Headers, ABI_VERSION

    def endpoint(method=None, input=None):
        return lambda f: types.SimpleNamespace(handler=f, method=method, input=input)

    m.endpoint = endpoint
    m.task = lambda f: types.SimpleNamespace(handler=f, atrund_type=TASK_TAG)
    return m


def load(bundle):
    """The bundle module, from Python source or from a zip (its name is the store's, so the
    content says which): a zip goes on the end of sys.path (the standard library wins a name
    clash) and its root's main.py is the bundle module. None: a zip without main.py."""
    with open(bundle, "rb") as f:
        magic = f.read(4)
    if magic in (b"PK\x03\x04", b"PK\x05\x06"):
        sys.path.append(bundle)
        spec = zipimport.zipimporter(bundle).find_spec("main")
        if spec is None:
            return None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["main"] = mod
        spec.loader.exec_module(mod)
        return mod
    loader = importlib.machinery.SourceFileLoader("bundle", bundle)
    spec = importlib.util.spec_from_file_location("bundle", bundle, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def load_or_exit(bundle):
    """The bundle module; on failure, the load-failed signal and exit 70."""
    try:
        mod = load(bundle)
        if mod is None:
            print("the bundle is a zip without main.py at its root; build it with `at-run build`",
                  file=sys.stderr)
            signal(event="load-failed", name="NoMainModule")
            sys.exit(70)
        abi = getattr(mod, "atrund_abi", None)
        if abi is not None and abi != ABI_VERSION:
            print(f"bundle declares ABI {abi}; this shim implements ABI {ABI_VERSION}", file=sys.stderr)
            signal(event="load-failed", name="AbiMismatch")
            sys.exit(70)
        return mod
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        print("bundle failed to load:", file=sys.stderr)
        traceback.print_exc()
        signal(event="load-failed", name=error_name(e))
        sys.exit(70)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--generic":
        return generic_main(sys.argv[2])
    if len(sys.argv) != 3:
        print("usage: python.py <bundle file> <socket path> | python.py --generic <socket path>",
              file=sys.stderr)
        sys.exit(64)
    bundle, socket_path = sys.argv[1], sys.argv[2]
    if not await_go():
        print("no go from at-rund on stdin; not loading the bundle", file=sys.stderr)
        sys.exit(71)
    sys.modules["atrund"] = runtime_module()
    mod = load_or_exit(bundle)

    async def run():
        server = await asyncio.start_unix_server(lambda r, w: serve_conn(lambda: mod, r, w),
                                                 path=socket_path, limit=MAX_LINE)
        signal(event="ready", abi=ABI_VERSION)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def generic_main(socket_path):
    """A pre-warmed generic sandbox (docs/design.md): the server is up before any bundle is
    known (only the readiness probe answers), then at-rund hands over one bundle, once, as a
    JSON line on stdin: {"bundle": "<file inside>", "env": {"NAME": "value", ...}}. The
    secrets go into the environment before the bundle is imported. Python enforces nothing
    itself, so there is no permission to hand over: the container is the whole boundary."""
    sys.modules["atrund"] = runtime_module()
    slot = types.SimpleNamespace(mod=None)

    async def run():
        server = await asyncio.start_unix_server(lambda r, w: serve_conn(lambda: slot.mod, r, w),
                                                 path=socket_path, limit=MAX_LINE)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.readline)
        if not line:
            print("no bundle from at-rund on stdin; exiting", file=sys.stderr)
            sys.exit(71)
        try:
            spec = json.loads(line)
            env, bundle = spec.get("env") or {}, spec["bundle"]
            if not isinstance(env, dict) or not isinstance(bundle, str):
                raise ValueError("bad types")
        except (ValueError, KeyError, AttributeError):
            print("the specialisation line is not the expected JSON", file=sys.stderr)
            sys.exit(71)
        os.environ.update({str(k): str(v) for k, v in env.items()})
        slot.mod = load_or_exit(bundle)
        signal(event="ready", abi=ABI_VERSION)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
