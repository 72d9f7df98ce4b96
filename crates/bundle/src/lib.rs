//! Bundles: the `dev.atrund.*` record types and manifest, the version selectors of the invocation
//! route, and the content-addressed on-disk store of verified bundle code.

pub mod record;

pub use record::{BlobRef, BundleRecord, Manifest, Permissions, ReleaseRecord};
