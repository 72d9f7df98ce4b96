//! [`Config::to_toml`]: the effective configuration as TOML, each value not from the built-in
//! defaults annotated with where it came from (for `at-rund check-config`). The output loads
//! back to the same config. Hand-rendered rather than `toml::to_string` so comments can be added.

use toml::{Table, Value};

use crate::{env_var_name, Config, Source};

impl Config {
    /// The effective config as TOML, with a `# from ...` comment on every value that does not
    /// come from the built-in defaults and a commented line for each unset optional key.
    pub fn to_toml(&self) -> String {
        let table = match Value::try_from(self) {
            Ok(Value::Table(t)) => t,
            Ok(_) => return "# could not render the configuration: not a table\n".into(),
            Err(e) => return format!("# could not render the configuration: {e}\n"),
        };
        let mut out = String::from(
            "# at-rund effective configuration. Values without a comment are built-in defaults.\n",
        );
        self.render(&table, "", &mut out);
        out
    }

    fn render(&self, t: &Table, prefix: &str, out: &mut String) {
        let path = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        for (k, v) in t.iter().filter(|(_, v)| !v.is_table()) {
            let key = path(k);
            out.push_str(&format!("{k} = {v}"));
            match self.source_of(&key) {
                Source::Default => {}
                s => out.push_str(&format!("  # from {s}")),
            }
            out.push('\n');
        }
        for (k, optional) in [
            ("identity", "handle_resolver"),
            ("deno", "path"),
            ("node", "path"),
            ("python", "path"),
            ("http", "bundle_domain"),
        ] {
            if prefix == k && !t.contains_key(optional) {
                let var = env_var_name(&path(optional));
                out.push_str(&format!("# {optional} is unset ({var})\n"));
            }
        }
        for (k, v) in t {
            if let Value::Table(sub) = v {
                let key = path(k);
                let only_tables = sub.values().all(Value::is_table)
                    && !matches!(key.as_str(), "identity" | "deno" | "node");
                if !only_tables {
                    out.push_str(&format!("\n[{key}]\n"));
                }
                self.render(sub, &key, out);
            }
        }
    }
}
