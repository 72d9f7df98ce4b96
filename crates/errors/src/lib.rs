//! Error classes: what kind of failure an error is, from the caller's point of view. Every error
//! enum of the data path (identity, repo, bundle, policy, secrets, sandbox, pool, http) says the
//! class of each variant with an exhaustive `match` (a new variant does not compile without
//! one), and the class alone decides the HTTP status ([`ErrorClass::status`], the one table). In
//! the spirit of Pingora's split of upstream, downstream and internal errors, with the few more
//! classes an HTTP API needs.
//!
//! Owns: the classes and their statuses. Must not touch: error names or messages (each crate
//! keeps its own), or any HTTP type (the status is a number, so every crate can depend on this).

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The request is malformed: bad syntax, bad input (400).
    BadRequest,
    /// The caller did not prove who they are: no credentials, or ones that do not verify (401).
    Unauthorized,
    /// The operator's policy does not allow it (403).
    Forbidden,
    /// No such author, bundle, version, record or endpoint (404).
    NotFound,
    /// The endpoint takes another method (405).
    MethodNotAllowed,
    /// The author's identity is gone for good (410).
    Gone,
    /// A request body or a bundle over a size limit (413).
    TooLarge,
    /// No capacity for this caller or author now: retry later (429, with `Retry-After`).
    Busy,
    /// The author's side failed or did not verify: their bundle's code, their PDS, records,
    /// identity or secrets (502).
    Author,
    /// The runner cannot take the request now: draining, backing off, no runtime (503).
    Unavailable,
    /// A time limit ran out (504).
    Timeout,
    /// The author is over their share of the runner's disk (507).
    Storage,
    /// The runner itself failed: a bug or a broken installation (500).
    Runner,
}

impl ErrorClass {
    /// Every class, for tables and tests.
    pub const ALL: [ErrorClass; 13] = [
        ErrorClass::BadRequest,
        ErrorClass::Unauthorized,
        ErrorClass::Forbidden,
        ErrorClass::NotFound,
        ErrorClass::MethodNotAllowed,
        ErrorClass::Gone,
        ErrorClass::TooLarge,
        ErrorClass::Busy,
        ErrorClass::Author,
        ErrorClass::Unavailable,
        ErrorClass::Timeout,
        ErrorClass::Storage,
        ErrorClass::Runner,
    ];

    /// The HTTP status of this class: the only place statuses are decided.
    pub fn status(self) -> u16 {
        match self {
            ErrorClass::BadRequest => 400,
            ErrorClass::Unauthorized => 401,
            ErrorClass::Forbidden => 403,
            ErrorClass::NotFound => 404,
            ErrorClass::MethodNotAllowed => 405,
            ErrorClass::Gone => 410,
            ErrorClass::TooLarge => 413,
            ErrorClass::Busy => 429,
            ErrorClass::Runner => 500,
            ErrorClass::Author => 502,
            ErrorClass::Unavailable => 503,
            ErrorClass::Timeout => 504,
            ErrorClass::Storage => 507,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_its_own_status() {
        let mut seen: Vec<u16> = ErrorClass::ALL.iter().map(|c| c.status()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ErrorClass::ALL.len());
        assert_eq!(ErrorClass::Author.status(), 502);
        assert_eq!(ErrorClass::Busy.status(), 429);
    }
}
