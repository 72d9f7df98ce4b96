//! The configuration requests see. The binary starts with one and may send another on SIGHUP
//! (`Config::reload` decides which keys may change); each read takes the one in force at that
//! moment, so a request that has begun keeps reading consistent values only within one
//! snapshot (`AppState::config`).
//!
//! Owns: the receiving end of the config channel. Must not: decide what may change, or load
//! and validate (the binary and atrund-config do).

use std::sync::Arc;

use atrund_config::Config;
use tokio::sync::watch;

/// The current configuration, shared by every request.
#[derive(Debug, Clone)]
pub struct LiveConfig(watch::Receiver<Arc<Config>>);

impl LiveConfig {
    /// A live config starting with `config`, and the sender a reload uses.
    pub fn new(config: Config) -> (Self, watch::Sender<Arc<Config>>) {
        let (tx, rx) = watch::channel(Arc::new(config));
        (LiveConfig(rx), tx)
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Config> {
        self.0.borrow().clone()
    }
}
