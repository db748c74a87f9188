//! One writer at a time across machines: a lease point in the catalog collection.
//!
//! The lease holds a random token, a human description of its holder, and an expiry in unix
//! milliseconds. Taking it is a compare-and-set: an upsert with an `update_filter` that lets
//! the write through only when the lease is expired (or already ours), then a read-back that
//! says whose token won. The server applies updates to one point in order, so of two writers
//! racing, the second's filter sees the first's fresh expiry and its write is dropped.
//!
//! A thread renews the lease every third of its time to live; a writer that crashes stops
//! renewing and the lease expires. When a renewal finds another token in the point, or cannot
//! reach the server until the lease has run out, the lease is lost and [`Lease::check`] fails,
//! so the knowledge base stops writing before its next batch.
//!
//! Expiry compares clocks of different machines: they must agree to well within the time to
//! live (NTP does). A writer paused longer than the time to live (a stopped VM) between its
//! check and its write can still write once after losing the lease; fencing tokens on every
//! chunk write would close that window, and are not built.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qdrant_client::qdrant::{Condition, Filter, PointId, Range};
use serde_json::{Value, json};

use super::catalog::{Catalog, LEASE_ID};
use crate::{Error, Result};

/// How long a lease lives without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who this process is, for the message a refused writer reads.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown host".into());
    format!("lore pid {} on {host}", std::process::id())
}

/// The writer lease of one knowledge base, held until dropped.
pub struct Lease {
    catalog: Catalog,
    token: String,
    ttl: Duration,
    lost: Arc<Mutex<Option<String>>>,
    /// The renewal has stopped (released, or abandoned).
    released: bool,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("catalog", &self.catalog.name())
            .field("token", &self.token)
            .finish()
    }
}

/// Writes our lease with the given expiry when `filter` lets it through, then reports whose
/// token the point holds and until when.
fn put(
    catalog: &Catalog,
    token: &str,
    who: &str,
    expires_ms: u64,
    filter: Filter,
) -> Result<(String, String, u64)> {
    let payload =
        json!({"record": "lease", "token": token, "holder": who, "expires_ms": expires_ms});
    catalog.put(vec![(PointId::from(LEASE_ID), payload)], Some(filter))?;
    let point = catalog.get(LEASE_ID)?.unwrap_or_default();
    let field = |k: &str| {
        point
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let until = point.get("expires_ms").and_then(Value::as_u64).unwrap_or(0);
    Ok((field("token"), field("holder"), until))
}

fn ours(token: &str) -> Filter {
    Filter::must([Condition::matches(
        "token",
        qdrant_client::qdrant::r#match::MatchValue::Keyword(token.to_string()),
    )])
}

impl Lease {
    /// Takes the lease of `catalog`'s knowledge base for `ttl`, renewed in the background.
    ///
    /// Fails with [`Error::LeaseHeld`] when another writer holds a lease that has not expired.
    pub fn acquire(catalog: Catalog, ttl: Duration) -> Result<Self> {
        let token = uuid::Uuid::new_v4().to_string();
        let who = holder();
        let now = now_ms();
        // Free when expired (a released lease expires at 0), and a point that does not exist
        // yet is written whatever the filter says.
        let free = Filter::must([Condition::range(
            "expires_ms",
            Range {
                lt: Some(now as f64),
                ..Range::default()
            },
        )]);
        let (winner, held_by, until) =
            put(&catalog, &token, &who, now + ttl.as_millis() as u64, free)?;
        if winner != token {
            return Err(Error::LeaseHeld {
                target: catalog.name().trim_end_matches("_lore").to_string(),
                holder: held_by,
                seconds_left: until.saturating_sub(now).div_ceil(1000),
            });
        }
        let lost = Arc::new(Mutex::new(None));
        let (stop, stopped) = mpsc::channel();
        let renewer = {
            let (catalog, token, lost) = (catalog.clone(), token.clone(), lost.clone());
            std::thread::Builder::new()
                .name("lore-lease".into())
                .spawn(move || renew(catalog, token, who, ttl, lost, stopped))
                .map_err(|e| Error::Store(format!("starting the lease's renewal: {e}")))?
        };
        Ok(Self {
            catalog,
            token,
            ttl,
            lost,
            released: false,
            stop: Some(stop),
            renewer: Some(renewer),
        })
    }

    /// Fails with [`Error::LeaseLost`] once the lease is no longer surely ours.
    pub fn check(&self) -> Result<()> {
        match self.lost.lock().map(|l| l.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(Error::LeaseLost(why)),
            Err(_) => Err(Error::LeaseLost("the renewal thread panicked".into())),
        }
    }

    /// Stops renewing without releasing, as a crashed writer would: the lease expires after
    /// its time to live. For crash drills and tests.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.stop_renewing();
    }

    /// Stops the renewal thread; returns whether it had already been stopped.
    fn stop_renewing(&mut self) -> bool {
        if std::mem::replace(&mut self.released, true) {
            return true;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        false
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Gives the lease back now (also done on drop).
    pub fn release(&mut self) -> Result<()> {
        if self.stop_renewing() {
            return Ok(());
        }
        put(&self.catalog, "", "", 0, ours(&self.token)).map(|_| ())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("releasing the writer lease: {e} (it expires on its own)");
        }
    }
}

/// The renewal loop: every third of `ttl`, push the expiry out, while the point still holds
/// our token.
fn renew(
    catalog: Catalog,
    token: String,
    who: String,
    ttl: Duration,
    lost: Arc<Mutex<Option<String>>>,
    stopped: mpsc::Receiver<()>,
) {
    let mut valid_until = now_ms() + ttl.as_millis() as u64;
    loop {
        match stopped.recv_timeout(ttl / 3) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = now_ms();
        let expires = now + ttl.as_millis() as u64;
        let verdict = match put(&catalog, &token, &who, expires, ours(&token)) {
            Ok((winner, _, _)) if winner == token => {
                valid_until = expires;
                None
            }
            Ok((_, holder, _)) => Some(format!(
                "the writer lease was taken over by {holder}: another process writes now"
            )),
            Err(e) if now >= valid_until => Some(format!(
                "the writer lease could not be renewed before it expired: {e}"
            )),
            Err(e) => {
                tracing::warn!("renewing the writer lease: {e} (retrying)");
                None
            }
        };
        if let Some(why) = verdict {
            if let Ok(mut slot) = lost.lock() {
                *slot = Some(why);
            }
            return;
        }
    }
}
