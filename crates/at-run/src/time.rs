//! RFC 3339 UTC timestamps for record `createdAt` / `updatedAt`.
//!
//! The formatting is `atrund_logs::rfc3339` (hand-rolled days-to-civil, shared with the
//! authors' logs' line times), so the workspace has one calendar. Must not touch anything but the
//! system clock.

/// Now, as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_rfc3339() -> String {
    atrund_logs::rfc3339_now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_looks_like_rfc3339() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 24, "{s}");
        assert!(
            s.ends_with('Z') && s.as_bytes().get(10) == Some(&b'T'),
            "{s}"
        );
        assert!(s.as_str() > "2024-01-01");
    }
}
