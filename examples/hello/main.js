// A bundle written by hand to the at-rund bundle ABI v1 (docs/bundle-abi.md):
// each exported { handler } object is an endpoint, named by its export.

export const greet = {
  method: "GET",
  handler: ({ name = "world" }) => ({ message: `Hello, ${name}!` }),
};

export const shout = {
  method: "POST",
  handler: ({ text = "" } = {}) => ({ text: text.toUpperCase(), length: text.length }),
};
