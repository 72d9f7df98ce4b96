"""The conformance kit's Python bundle that fails while it loads: the start must fail."""
raise RuntimeError("kit: this bundle refuses to load")
