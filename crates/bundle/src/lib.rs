//! Bundles: the `dev.atrund.*` record types and manifest (`record`), the version selectors of the
//! invocation route (`selector`), the content-addressed on-disk store of verified code (`store`),
//! the fetch + verify pipeline that ties identity, repo proofs and the store together
//! (`source`), and the per-DID revision floors that refuse a replayed older repository
//! (`revisions`).

pub mod cron;
pub mod events;
mod flights;
pub mod local;
pub mod record;
pub mod revisions;
pub mod selector;
pub mod source;
pub mod store;

pub use events::{EventStreamStats, EventWatch, Invalidations};
pub use local::{LocalBundle, LocalBundleError, LocalSnapshot};
pub use record::{BlobRef, BundleRecord, Manifest, Permissions, ReleaseRecord};
pub use revisions::RevisionFloors;
pub use selector::VersionSelector;
pub use source::{BundleError, BundleSource, LoadedBundle, LoadedSecrets, SourceConfig};
pub use store::{BundleStore, StoreError};
