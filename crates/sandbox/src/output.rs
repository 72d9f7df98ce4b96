//! Splitting an instance's stdout/stderr into bounded lines, with the instance's secret values
//! masked before a line reaches the log.
//!
//! Owns: the line cap, so a bundle printing one endless line cannot grow our memory (hand-rolled
//! because `AsyncBufReadExt::lines` buffers a whole line, however long, before returning it), and
//! the masking: each secret value of at least [`MIN_MASKED`] bytes becomes `[secret NAME]`, also
//! where the cap cuts a line inside a value. Masking catches a bundle printing its own secret; it
//! cannot catch one set on leaking it (encoded, split across lines or reversed).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept; the rest of a longer line is dropped and the line is marked.
pub(crate) const MAX_LINE: usize = 2048;

/// Shorter values are not masked: they would mask ordinary words and numbers.
pub(crate) const MIN_MASKED: usize = 4;

/// The secret values of one instance and their names, longest value first (so a value that
/// contains another is masked whole). A generic sandbox's output starts before its bundle (and
/// so its secrets) is known: its masker is made empty ([`Masker::later`]) and set once
/// ([`Masker::set`]) before the bundle gets its secrets.
#[derive(Clone, Default)]
pub(crate) struct Masker {
    secrets: Arc<std::sync::OnceLock<Vec<(String, String)>>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .secrets
            .get()
            .into_iter()
            .flatten()
            .map(|(_, n)| n.as_str())
            .collect();
        f.debug_struct("Masker").field("names", &names).finish()
    }
}

impl Masker {
    /// From the instance's environment: (name, value) pairs.
    pub(crate) fn new(env: &[(String, String)]) -> Self {
        let m = Self::later();
        m.set(env);
        m
    }

    /// A masker whose secrets are set later, once ([`Masker::set`]).
    pub(crate) fn later() -> Self {
        Self::default()
    }

    /// Sets the secrets of a [`Masker::later`]; a second call changes nothing.
    pub(crate) fn set(&self, env: &[(String, String)]) {
        let mut secrets: Vec<(String, String)> = env
            .iter()
            .filter(|(_, v)| v.len() >= MIN_MASKED)
            .map(|(k, v)| (v.clone(), k.clone()))
            .collect();
        secrets.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        let _ = self.secrets.set(secrets);
    }

    /// `line` with every secret value replaced; when `cut`, a tail that begins a value (the
    /// cap fell inside it) is replaced too.
    pub(crate) fn mask(&self, line: &str, cut: bool) -> String {
        let secrets = match self.secrets.get() {
            Some(s) if !s.is_empty() => s,
            _ => return line.to_string(),
        };
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        'scan: while let Some(c) = rest.chars().next() {
            for (value, name) in secrets.iter() {
                if rest.starts_with(value.as_str()) || (cut && value.starts_with(rest)) {
                    out.push_str("[secret ");
                    out.push_str(name);
                    out.push(']');
                    rest = rest.get(value.len().min(rest.len())..).unwrap_or("");
                    continue 'scan;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// Deno's notice at every start of a generic sandbox (its permission broker is unstable): known
/// and expected, so it is not worth a warning per refill.
pub(crate) fn is_broker_notice(line: &str) -> bool {
    line == "Warning Permission broker is an experimental feature"
}

/// Calls `on_line` for each line of `reader` (lossy UTF-8, without the newline, secrets
/// masked) until EOF or error.
pub(crate) async fn for_each_line<R, F>(mut reader: R, masker: &Masker, mut on_line: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(&str),
{
    let mut chunk = [0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut truncated = false;
    let mut emit = |line: &mut Vec<u8>, truncated: &mut bool| {
        let lossy = String::from_utf8_lossy(line);
        // The cap may split a character; its replacement mark would hide a cut value.
        let whole = if *truncated {
            lossy.trim_end_matches('\u{FFFD}')
        } else {
            &lossy
        };
        let mut text = masker.mask(whole, *truncated);
        if *truncated {
            text.push_str(" …[line truncated]");
        }
        on_line(&text);
        line.clear();
        *truncated = false;
    };
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in chunk.iter().take(n) {
            if b == b'\n' {
                emit(&mut line, &mut truncated);
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                truncated = true;
            }
        }
    }
    if !line.is_empty() || truncated {
        emit(&mut line, &mut truncated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8]) -> Vec<String> {
        masked(input, &Masker::default()).await
    }

    async fn masked(input: &[u8], m: &Masker) -> Vec<String> {
        let mut out = Vec::new();
        for_each_line(input, m, |l| out.push(l.to_string())).await;
        out
    }

    fn env(pairs: &[(&str, &str)]) -> Masker {
        let e: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Masker::new(&e)
    }

    #[tokio::test]
    async fn secret_values_are_masked() {
        let m = env(&[
            ("API_KEY", "sk-live-123"),
            ("LONGER", "sk-live-123-and-more"),
            ("PIN", "123"),
            ("UNI", "päss—wört"),
        ]);
        let got = masked(
            "key=sk-live-123 x sk-live-123-and-more\npin 123 päss—wört!\nsk-live-12\n".as_bytes(),
            &m,
        )
        .await;
        assert_eq!(
            got,
            [
                "key=[secret API_KEY] x [secret LONGER]",
                // Values under 4 bytes stay: they would mask ordinary text.
                "pin 123 [secret UNI]!",
                // Not the whole value: nothing to mask.
                "sk-live-12",
            ]
        );
        assert!(!format!("{m:?}").contains("sk-live"));
    }

    #[tokio::test]
    async fn a_value_cut_by_the_line_cap_is_masked() {
        let value = "0123456789abcdef";
        let m = env(&[("TOKEN", value)]);
        let mut input = vec![b'x'; MAX_LINE - 5];
        input.extend_from_slice(value.as_bytes());
        input.push(b'\n');
        let got = masked(&input, &m).await;
        assert_eq!(got.len(), 1);
        assert!(!got[0].contains("01234"), "{}", &got[0][MAX_LINE - 20..]);
        assert!(got[0].ends_with("[secret TOKEN] …[line truncated]"));
    }

    #[tokio::test]
    async fn splits_caps_and_survives_garbage() {
        assert_eq!(lines(b"a\nb\n\nc").await, ["a", "b", "", "c"]);
        assert!(lines(b"").await.is_empty());
        let long = vec![b'x'; MAX_LINE * 5];
        let got = lines(&[long.as_slice(), b"\nok\n"].concat()).await;
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with(&"x".repeat(MAX_LINE)));
        assert!(got[0].ends_with("[line truncated]"));
        assert_eq!(got[1], "ok");
        let got = lines(&[0xff, 0xfe, b'\n', 0x00, 0xc3]).await;
        assert_eq!(got.len(), 2);
    }
}
