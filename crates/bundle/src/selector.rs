//! The `{version}` segment of the invocation route: `latest`, a semantic version, or the CID of a
//! bundle record. Owns parsing only; resolving a selector to a record is `source`'s job.

use std::fmt;

use crate::record::{parse_version, RecordError};

/// Which published version of a bundle a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionSelector {
    /// Whatever the `dev.atrund.release` pointer names now.
    Latest,
    /// One exact version (record key `{name}:{version}`).
    Version(String),
    /// The record with this CID (a pin that survives a re-published version string).
    RecordCid(cid::Cid),
}

impl VersionSelector {
    /// Parses a route segment. A string that is neither `latest`, a semver nor a CID is an error
    /// that says which forms are accepted.
    pub fn parse(segment: &str) -> Result<Self, RecordError> {
        if segment == "latest" {
            return Ok(VersionSelector::Latest);
        }
        if parse_version(segment).is_ok() {
            return Ok(VersionSelector::Version(segment.to_string()));
        }
        match cid::Cid::try_from(segment) {
            Ok(c) if c.version() == cid::Version::V1 && c.codec() == 0x71 => {
                Ok(VersionSelector::RecordCid(c))
            }
            _ => Err(RecordError::BadVersion(format!(
                "{segment}' is not 'latest', a semantic version or a record CID (bafyrei...)"
            ))),
        }
    }
}

impl fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSelector::Latest => f.write_str("latest"),
            VersionSelector::Version(v) => f.write_str(v),
            VersionSelector::RecordCid(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form() {
        assert_eq!(
            VersionSelector::parse("latest"),
            Ok(VersionSelector::Latest)
        );
        assert_eq!(
            VersionSelector::parse("1.2.3"),
            Ok(VersionSelector::Version("1.2.3".into()))
        );
        let c = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
        assert!(matches!(
            VersionSelector::parse(c),
            Ok(VersionSelector::RecordCid(_))
        ));
        // A raw (blob) CID is not a record.
        assert!(VersionSelector::parse(
            "bafkreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
        )
        .is_err());
        for bad in ["", "LATEST", "1.2", "v1", "bafy", "../x"] {
            assert!(VersionSelector::parse(bad).is_err(), "{bad}");
        }
    }
}
