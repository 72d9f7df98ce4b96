// The hello example for the Node.js runtime (`runtime = "node"`): the same bundle ABI v1 as
// examples/hello (docs/bundle-abi.md), answering the same way. Node built-ins come from `node:`
// imports; web globals (Response, fetch, URL) work as in Deno; `Deno.*` does not exist here.

import { platform } from "node:process";

export const greet = {
  method: "GET",
  handler: ({ name = "world" }) => ({ message: `Hello, ${name}!` }),
};

export const shout = {
  method: "POST",
  handler: ({ text = "" } = {}) => ({ text: text.toUpperCase(), length: text.length }),
};

// Which runtime answered: Node names its platform and version.
export const runtime = {
  method: "GET",
  handler: () => ({ runtime: "node", version: process.version, platform }),
};
