//! The author CLI's commands as a library, so the daemon's end-to-end tests publish through
//! exactly the code `at-run` runs. `main.rs` is only the command-line edge.

pub mod auth;
pub mod authed;
pub mod build;
pub mod child;
pub mod deno;
pub mod deploy;
pub mod dev;
pub mod error;
pub mod jobs;
pub mod logs;
pub mod node;
pub mod project;
pub mod pypack;
pub mod python;
pub mod releases;
pub mod runner;
pub mod runners;
pub mod secrets;
pub mod time;
pub mod xrpc;
