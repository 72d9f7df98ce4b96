"""The hello example for the Python runtime (`runtime = "python"`): the same endpoints as
examples/hello, answering the same way (docs/bundle-abi.md, docs/runtimes.md). A module attribute
with a callable `handler` is an endpoint named by the attribute; `atrund` is provided by the
runtime's shim. Standard library only."""

import platform

from atrund import endpoint

greet = {
    "method": "GET",
    "handler": lambda input, ctx: {"message": f"Hello, {input.get('name', 'world')}!"},
}


@endpoint(method="POST")
def shout(input, ctx):
    text = (input or {}).get("text", "")
    return {"text": text.upper(), "length": len(text)}


# Which runtime answered.
runtime = {
    "method": "GET",
    "handler": lambda input, ctx: {"runtime": "python", "version": platform.python_version()},
}
