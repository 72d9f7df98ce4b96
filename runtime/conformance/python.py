"""The conformance kit's bundle for the Python runtime (`at-rund runtime-test --runtime python`,
docs/runtimes.md): the Deno kit's cases in Python, and Python's own. Each endpoint is one case; a
refused attempt answers {"error"} and an escape {"leaked"}. KIT_SECRET is the one secret the kit
gives the instance."""

import asyncio
import os
import socket
import subprocess
import sys

from atrund import Response, endpoint, task


def attempt(f):
    try:
        return {"leaked": str(f())}
    except Exception as e:  # noqa: BLE001 - any refusal counts
        return {"error": getattr(e, "errno", None) and f"errno {e.errno}" or type(e).__name__}


# The protocol.
async def _echo(input, ctx):
    return {"input": input, "rest": ctx.rest, "method": ctx.request.method, "endpoint": ctx.endpoint}


echo = {"handler": _echo}
status = {"method": "GET", "handler": lambda i, ctx: Response("created", 201, {"x-kit": "yes"})}


def _chunks():
    for i in range(3):
        yield f"chunk-{i}"


stream = {"method": "GET", "handler": lambda i, ctx: Response(_chunks())}
nothing = {"method": "GET", "handler": lambda i, ctx: None}
onlyGet = {"method": "GET", "handler": lambda i, ctx: "get"}


def _throws(i, ctx):
    raise RuntimeError("kit: thrown on purpose")


throws = {"method": "GET", "handler": _throws}
aTask = task(lambda i, ctx: "task")
secret = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: os.environ["KIT_SECRET"])}

# Hostile: each must be refused.
readHost = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: open("/etc/passwd").read())}


def _write():
    with open("/etc/kit-pwned", "w") as f:
        f.write("x")
    return "written"


writeHost = {"method": "GET", "handler": lambda i, ctx: attempt(_write)}


def _other_env():
    for k in ("HOME", "PATH", "USER"):
        if k in os.environ:
            return os.environ[k]
    raise LookupError("not set")


otherEnv = {"method": "GET", "handler": lambda i, ctx: attempt(_other_env)}
spawn = {
    "method": "GET",
    "handler": lambda i, ctx: attempt(
        lambda: subprocess.run(["/bin/sh", "-c", "echo spawned"], capture_output=True, check=True).stdout
    ),
}


def _loopback():
    s = socket.create_connection(("127.0.0.1", 22), timeout=5)
    s.close()
    return "connected"


loopback = {"method": "GET", "handler": lambda i, ctx: attempt(_loopback)}


# Limits: each breaks one and takes its instance with it.
async def _sleep(i, ctx):
    await asyncio.sleep(600)
    return "woke"


sleep = {"method": "GET", "handler": _sleep}


def _spin(i, ctx):
    while True:
        pass


spin = {"method": "GET", "handler": _spin}


def _hog(i, ctx):
    keep = []
    while True:
        keep.append(b"\x01" * (1 << 20))  # written, so the pages are really used


hog = {"method": "GET", "handler": _hog}
big = {"method": "GET", "handler": lambda i, ctx: Response(b"\x00" * (8 << 20))}


# Python's own: it refuses nothing itself, so each of these is the kernel layer's.
def _ctypes_open():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.open(b"/etc/passwd", 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "open refused")
    os.close(fd)
    return f"fd {fd}"


ctypesOpen = {"method": "GET", "handler": lambda i, ctx: attempt(_ctypes_open)}


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return f"sent {s.sendto(b'kit', ('127.0.0.1', 9))}"
    finally:
        s.close()


udp = {"method": "GET", "handler": lambda i, ctx: attempt(_udp)}


def _libc_call(name, *args):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    r = getattr(libc, name)(*args)
    if r < 0:
        raise OSError(ctypes.get_errno(), f"{name} refused")
    return f"{name} returned {r}"


CLONE_NEWUSER, CLONE_NEWNET, PTRACE_ATTACH = 0x10000000, 0x40000000, 16
unshare = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNET))}
mount = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: _libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None))}
ptrace = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: _libc_call("ptrace", PTRACE_ATTACH, os.getppid(), None, None))}


def _signal(pid):
    os.kill(pid, 0)  # signal 0: the check alone, so a leak harms nothing
    return f"may signal {pid}"


signalRunner = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: _signal(int(i["pid"])))}
readProc = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: open(f"/proc/{int(i['pid'])}/cmdline", "rb").read())}


def _listen():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        return f"listening on {s.getsockname()[1]}"
    finally:
        s.close()


listen = {"method": "GET", "handler": lambda i, ctx: attempt(_listen)}


def _fast_open():
    # TCP Fast Open connects from sendto: no connect() for Landlock or the connect gate to see.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.sendto(b"kit", socket.MSG_FASTOPEN, ("127.0.0.1", 22))
        return "sent"
    finally:
        s.close()


fastOpen = {"method": "GET", "handler": lambda i, ctx: attempt(_fast_open)}


def _vsock():
    # In a microVM the agent listens on vsock 1024 and 1025 for the host, and the host's end of
    # the egress forward is CID 2 port 3128 (the proxy, which the instance may use anyway): no
    # other vsock peer may answer the instance. Elsewhere vsock is not there at all.
    for cid in (1, 2, 3):
        for port in (22, 1024, 1025):
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            try:
                s.settimeout(3)
                s.connect((cid, port))
                return f"connected to vsock {cid}:{port}"
            except OSError as e:
                last = e
            finally:
                s.close()
    raise last


vsock = {"method": "GET", "handler": lambda i, ctx: attempt(_vsock)}
procEnviron = {"method": "GET", "handler": lambda i, ctx: attempt(lambda: open("/proc/1/environ", "rb").read())}


def _reexec():
    # The interpreter may run again (it is the runtime); what it then tries is refused all the same.
    r = subprocess.run([sys.executable, "-I", "-S", "-c", "print(open('/etc/passwd').read())"],
                       capture_output=True)
    if r.returncode != 0:
        raise PermissionError(f"the child failed ({r.returncode})")
    return r.stdout


reexec = {"method": "GET", "handler": lambda i, ctx: attempt(_reexec)}


def _symlink_out():
    # Without the planted link the case would pass for nothing: say so as a leak.
    if not os.path.islink("in/link"):
        return "the kit's link in/link is missing: this case proved nothing"
    return open("in/link").read()


symlinkOut = {"method": "GET", "handler": lambda i, ctx: attempt(_symlink_out)}
