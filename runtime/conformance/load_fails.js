// The conformance kit's bundle that fails while it loads (every JavaScript runtime): the start
// must fail.
throw new Error("kit: this bundle refuses to load");
