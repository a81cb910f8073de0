//! What operators read that no request path needs: the counts every replica adds per 10 s
//! slot, the replicas' reports, the latest session failures, leases' holders, and the
//! console's sign-ins.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use super::{Result, Store};

/// How long a stats slot is kept: the longest window read (15 minutes) and some.
const STATS_TTL_SECONDS: i64 = 20 * 60;
/// The failures kept.
pub const FAILURES_KEPT: isize = 200;

impl Store {
    /// Adds counts to their slots: `(slot start, [(field, n)])`, one round trip.
    pub async fn add_stats(&self, slots: &[(i64, Vec<(String, i64)>)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (start, fields) in slots {
            let key = self.keys().stats(*start);
            for (field, n) in fields {
                pipe.hincr(&key, field, *n).ignore();
            }
            pipe.expire(&key, STATS_TTL_SECONDS).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await
    }

    /// The counts of each slot (empty for a slot nobody counted in), one round trip.
    pub async fn stats(&self, slot_starts: &[i64]) -> Result<Vec<HashMap<String, i64>>> {
        let mut pipe = redis::pipe();
        for start in slot_starts {
            pipe.hgetall(self.keys().stats(*start));
        }
        pipe.query_async(&mut self.conn()).await
    }

    /// Keeps this replica's report.
    pub async fn report_replica(&self, instance: &str, report: &str) -> Result<()> {
        self.conn().hset(self.keys().replicas(), instance, report).await
    }

    /// Every replica's last report.
    pub async fn replica_reports(&self) -> Result<HashMap<String, String>> {
        self.conn().hgetall(self.keys().replicas()).await
    }

    /// Forgets the reports of replicas long gone.
    pub async fn forget_replicas(&self, instances: &[String]) -> Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        self.conn().hdel(self.keys().replicas(), instances).await
    }

    /// Keeps a session failure (JSON), dropping the oldest beyond [`FAILURES_KEPT`].
    pub async fn record_failure(&self, failure: &str) -> Result<()> {
        let key = self.keys().failures();
        redis::pipe()
            .lpush(&key, failure)
            .ignore()
            .ltrim(&key, 0, FAILURES_KEPT - 1)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
    }

    /// The latest `limit` failures, newest first.
    pub async fn failures(&self, limit: usize) -> Result<Vec<String>> {
        let last = isize::try_from(limit).unwrap_or(FAILURES_KEPT).min(FAILURES_KEPT) - 1;
        self.conn().lrange(self.keys().failures(), 0, last).await
    }

    /// Who holds each of `queues`' forming leases, and the warm Pods' lease.
    pub async fn lease_holders(&self, queues: &[&str]) -> Result<(Vec<Option<String>>, Option<String>)> {
        let mut keys: Vec<String> = queues.iter().map(|q| self.keys().of_queue(q).lease).collect();
        keys.push(self.keys().warm_lease());
        let mut holders: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut self.conn()).await?;
        let warm = holders.pop().flatten();
        Ok((holders, warm))
    }

    /// Every profile's version settings as operators last set them (JSON), by profile.
    pub async fn version_settings(&self) -> Result<HashMap<String, String>> {
        self.conn().hgetall(self.keys().versions()).await
    }

    /// One profile's version settings (JSON).
    pub async fn profile_version_settings(&self, profile: &str) -> Result<Option<String>> {
        self.conn().hget(self.keys().versions(), profile).await
    }

    /// Sets one profile's version settings (JSON).
    pub async fn put_version_settings(&self, profile: &str, settings: &str) -> Result<()> {
        self.conn().hset(self.keys().versions(), profile, settings).await
    }

    /// Keeps a console sign-in (JSON) under its cookie's digest for `ttl`.
    pub async fn put_console_session(&self, digest: &str, session: &str, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.conn().pset_ex(self.keys().console(digest), session, ms).await
    }

    /// A console sign-in by its cookie's digest.
    pub async fn console_session(&self, digest: &str) -> Result<Option<String>> {
        self.conn().get(self.keys().console(digest)).await
    }

    /// Signs a console session out.
    pub async fn drop_console_session(&self, digest: &str) -> Result<()> {
        self.conn().del(self.keys().console(digest)).await
    }
}
