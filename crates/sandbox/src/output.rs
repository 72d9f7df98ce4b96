//! Splitting an instance's stdout/stderr into bounded lines.
//!
//! Owns: the line cap, so a bundle printing one endless line cannot grow our memory. Hand-rolled
//! because `AsyncBufReadExt::lines` buffers a whole line, however long, before returning it.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept; the rest of a longer line is dropped and the line is marked.
pub(crate) const MAX_LINE: usize = 2048;

/// Calls `on_line` for each line of `reader` (lossy UTF-8, without the newline) until EOF or error.
pub(crate) async fn for_each_line<R, F>(mut reader: R, mut on_line: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(&str),
{
    let mut chunk = [0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut truncated = false;
    let mut emit = |line: &mut Vec<u8>, truncated: &mut bool| {
        let mut text = String::from_utf8_lossy(line).into_owned();
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
        let mut out = Vec::new();
        for_each_line(input, |l| out.push(l.to_string())).await;
        out
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
