# The Python bundle of crates/sandbox/tests/generic.rs: each endpoint does one thing and reports
# {"ok": ...} with what it got, or {"error": <exception class>, "errno": <errno or None>}.
# Python enforces nothing itself: what it may do is what the container lets it.
import os
import urllib.request


def attempt(f):
    try:
        return {"ok": f()}
    except Exception as e:
        return {"error": type(e).__name__, "errno": getattr(e, "errno", None)}


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path):
    with open(path, "w") as f:
        f.write("written")
    return "written"


def _net(url):
    with urllib.request.urlopen(url, timeout=4) as r:
        return f"{r.status} {r.read().decode()}"


_marks = {}


def _mark(value):
    before = _marks.get("global")
    _marks["global"] = value
    try:
        with open("/tmp/mark") as f:
            tmp = f.read()
    except FileNotFoundError:
        tmp = None
    with open("/tmp/mark", "w") as f:
        f.write(value)
    return {"global": before, "tmp": tmp}


read = {"handler": lambda i, c: attempt(lambda: _read(i["path"]))}
write = {"handler": lambda i, c: attempt(lambda: _write(i["path"]))}
envGet = {"handler": lambda i, c: attempt(lambda: os.environ.get(i["name"]))}
envNames = {"handler": lambda i, c: attempt(lambda: sorted(os.environ))}
net = {"handler": lambda i, c: attempt(lambda: _net(i["url"]))}
mark = {"handler": lambda i, c: attempt(lambda: _mark(i["value"]))}
