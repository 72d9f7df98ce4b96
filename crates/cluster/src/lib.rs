//! The runners of one cluster (docs/cluster.md): each announces itself in the shared Redis
//! every [`HEARTBEAT`] with a key that expires after [`EXPIRY`], and keeps the list of the
//! others that are alive. A bundle belongs to one live runner, chosen by rendezvous hashing of
//! its key over the live runners' ids, so every runner agrees without talking to the others,
//! and a runner that joins or leaves moves only its own share of the bundles.
//!
//! Owns: the registry keys under the prefix (`<prefix>nodes`, `<prefix>node:<id>`) and the
//! choice of a bundle's runner. Must not touch: requests (the HTTP layer forwards them), or the
//! job queue's keys. The live list is read from memory, so the choice never waits on Redis;
//! it is at most one heartbeat old.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// How often a runner announces itself and reads the others.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an announcement lasts: a runner silent this long is taken to be gone.
pub const EXPIRY: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// the cluster's Redis failed: {0}; check that it runs and that state.redis_url reaches it
    #[error(
        "the cluster's Redis failed: {0}; check that it runs and that state.redis_url reaches it"
    )]
    Redis(String),
    /// cannot make a node id: {0}
    #[error("cannot make a node id: {0}")]
    NodeId(String),
}

fn db(e: redis::RedisError) -> ClusterError {
    ClusterError::Redis(e.to_string())
}

/// One runner of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Random per process start.
    pub id: String,
    /// Where the other runners reach it, e.g. `http://10.0.0.11:3000`.
    pub url: String,
}

/// This runner's view of the cluster.
pub struct Registry {
    conn: ConnectionManager,
    prefix: String,
    me: Node,
    /// The live runners, this one included, by id.
    live: RwLock<Arc<Vec<Node>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("me", &self.me)
            .field("live", &self.live())
            .finish_non_exhaustive()
    }
}

/// A fresh node id: 16 hex digits.
pub fn new_node_id() -> Result<String, ClusterError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| ClusterError::NodeId(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    /// Announces `me` once (so a runner that starts is routable at once) and reads the others.
    pub async fn join(
        conn: ConnectionManager,
        prefix: &str,
        me: Node,
    ) -> Result<Arc<Registry>, ClusterError> {
        let r = Arc::new(Registry {
            conn,
            prefix: prefix.to_string(),
            live: RwLock::new(Arc::new(vec![me.clone()])),
            me,
        });
        r.beat().await?;
        Ok(r)
    }

    pub fn me(&self) -> &Node {
        &self.me
    }

    /// The live runners as last read, this one included.
    pub fn live(&self) -> Arc<Vec<Node>> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The live runner `key` belongs to; `None` when that is this one.
    pub fn owner(&self, key: &str) -> Option<Node> {
        let live = self.live();
        let best = live.iter().max_by_key(|n| score(&n.id, key))?;
        (best.id != self.me.id).then(|| best.clone())
    }

    /// Takes `node` out of the live list until it announces itself again (a forward to it
    /// failed: it is gone or going).
    pub fn suspect(&self, node: &Node) {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.iter().any(|n| n.id == node.id) {
            *live = Arc::new(live.iter().filter(|n| n.id != node.id).cloned().collect());
        }
    }

    /// One heartbeat: announce this runner, then read who else is alive.
    async fn beat(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let nodes = format!("{}nodes", self.prefix);
        let me = serde_json::to_string(&self.me).map_err(|e| ClusterError::Redis(e.to_string()))?;
        let now = now_ms();
        redis::pipe()
            .cmd("SET")
            .arg(format!("{}node:{}", self.prefix, self.me.id))
            .arg(me)
            .arg("PX")
            .arg(EXPIRY.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(&nodes)
            .arg(now)
            .arg(&self.me.id)
            .ignore()
            // Announcements older than twice the expiry are gone for good.
            .cmd("ZREMRANGEBYSCORE")
            .arg(&nodes)
            .arg("-inf")
            .arg(now.saturating_sub(2 * EXPIRY.as_millis() as u64))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(db)?;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&nodes)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(db)?;
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{}node:{id}", self.prefix))
            .collect();
        let found: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(db)?
        };
        let mut live: Vec<Node> = found
            .into_iter()
            .flatten()
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect();
        if !live.iter().any(|n| n.id == self.me.id) {
            live.push(self.me.clone());
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        Ok(())
    }

    /// Announces this runner every [`HEARTBEAT`] until `draining`; then withdraws it, so the
    /// others stop sending it requests while it drains.
    pub fn spawn_heartbeat(self: &Arc<Self>, mut draining: watch::Receiver<bool>) {
        let r = self.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = draining.wait_for(|d| *d) => break,
                }
                match r.beat().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(node = %r.me.id, live = r.live().len(), "cluster: Redis reachable again");
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(node = %r.me.id, error = %e, "cluster: cannot announce this runner; the others will stop routing to it");
                        }
                        failing = true;
                        // Alone until Redis answers: serve everything here.
                        *r.live.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(vec![r.me.clone()]);
                    }
                }
            }
            let mut conn = r.conn.clone();
            let gone: Result<(), _> = redis::pipe()
                .cmd("DEL")
                .arg(format!("{}node:{}", r.prefix, r.me.id))
                .ignore()
                .cmd("ZREM")
                .arg(format!("{}nodes", r.prefix))
                .arg(&r.me.id)
                .ignore()
                .query_async(&mut conn)
                .await;
            match gone {
                Ok(()) => {
                    tracing::info!(node = %r.me.id, "cluster: this runner withdrew (draining)")
                }
                Err(e) => {
                    tracing::warn!(node = %r.me.id, error = %e, "cluster: cannot withdraw; the others notice when its announcement expires")
                }
            }
        });
    }
}

/// Rendezvous score of `node` for `key`: the highest wins.
fn score(node: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_leavers_share() {
        let nodes = ["a1", "b2", "c3"];
        let owner = |set: &[&str], key: &str| -> String {
            set.iter()
                .max_by_key(|n| score(n, key))
                .unwrap()
                .to_string()
        };
        let keys: Vec<String> = (0..300).map(|i| format!("did:plc:x/b{i}")).collect();
        let mut per = std::collections::HashMap::<String, usize>::new();
        for k in &keys {
            *per.entry(owner(&nodes, k)).or_default() += 1;
        }
        assert!(per.values().all(|n| *n > 60), "spread: {per:?}");
        for k in &keys {
            let before = owner(&nodes, k);
            let after = owner(&["a1", "c3"], k);
            if before != "b2" {
                assert_eq!(before, after, "{k} moved though its runner stayed");
            }
        }
    }
}
