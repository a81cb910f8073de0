//! One queue's part of the Redis state: scoped once ([`Store::queue`]), then called, so a round
//! of forming names its queue's keys once rather than at every step.

use std::time::Duration;

use redis::AsyncCommands;

use super::{FORM, JOIN, Json, PLACE, Result, Store};
use super::{FormedSession, JoinOutcome, Placed, QueueDepth, StoredTicket};
use crate::keys::QueueKeys;
use crate::queues::FormRules;

/// A handle on one queue's keys. Cheap to clone.
#[derive(Clone)]
pub struct QueueStore {
    store: Store,
    name: String,
    keys: QueueKeys,
}

impl Store {
    /// The handle on queue `name`'s state.
    pub fn queue(&self, name: &str) -> QueueStore {
        QueueStore {
            store: self.clone(),
            name: name.to_owned(),
            keys: self.keys().of_queue(name),
        }
    }

    /// Each queue's depth and oldest ticket, in the order given, in two round trips.
    pub async fn queue_depths<'q>(&self, queues: impl IntoIterator<Item = &'q QueueStore>) -> Result<Vec<QueueDepth>> {
        let queues: Vec<&QueueStore> = queues.into_iter().collect();
        let mut pipe = redis::pipe();
        for q in &queues {
            pipe.zcard(&q.keys.queue).zrange(&q.keys.queue, 0, 0);
        }
        let mut conn = self.conn();
        let raw: Vec<(u64, Vec<String>)> = pipe.query_async(&mut conn).await?;
        let mut pipe = redis::pipe();
        for (q, (_, head)) in queues.iter().zip(&raw) {
            pipe.hget(&q.keys.joined, head.first().map_or("", String::as_str));
        }
        let joined: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
        Ok(raw
            .into_iter()
            .zip(joined)
            .map(|((tickets, _), oldest_joined_ms)| QueueDepth {
                tickets,
                oldest_joined_ms,
            })
            .collect())
    }
}

impl QueueStore {
    /// The whole store this queue is part of.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queues a ticket of `players` (the leader first), idempotently, unless one of them is
    /// busy; `doc` is a rule queue's ticket document (a JSON object), `None` in a plain queue.
    pub async fn join(&self, players: &[String], doc: Option<&str>, now_ms: i64) -> Result<JoinOutcome> {
        let k = self.store.keys();
        let q = &self.keys;
        let mut script = JOIN.prepare_invoke();
        script
            .key(&q.queue)
            .key(&q.joined)
            .key(k.seq())
            .key(k.player_session())
            .key(k.sessions())
            .key(k.waiting())
            .key(&q.tickets)
            .arg(&self.name)
            .arg(now_ms)
            .arg(doc.unwrap_or(""));
        for player in players {
            script.arg(player);
        }
        let Json(outcome) = script.invoke_async(&mut self.store.conn()).await?;
        Ok(outcome)
    }

    /// Forms up to `max` sessions from this plain queue as of `now_ms`, in join order, owned by
    /// `instance`, in `region` (if regions are configured).
    pub async fn form(
        &self,
        rules: &FormRules,
        now_ms: i64,
        instance: &str,
        max: usize,
        region: Option<&str>,
    ) -> Result<Vec<FormedSession>> {
        let k = self.store.keys();
        let q = &self.keys;
        let mut script = FORM.prepare_invoke();
        script
            .key(&q.queue)
            .key(&q.joined)
            .key(k.live())
            .key(k.outbox())
            .key(k.player_session())
            .key(k.sessions())
            .key(k.waiting())
            .arg(rules.size)
            .arg(rules.min_partial)
            .arg(rules.flush_wait_ms)
            .arg(now_ms)
            .arg(instance)
            .arg(k.events())
            .arg(&self.name)
            .arg(region.unwrap_or(""));
        for _ in 0..max {
            script.arg(uuid::Uuid::new_v4().to_string());
        }
        let Json(mut formed): Json<Vec<FormedSession>> = script.invoke_async(&mut self.store.conn()).await?;
        for session in &mut formed {
            self.name.clone_into(&mut session.queue);
            session.region = region.map(str::to_owned);
        }
        Ok(formed)
    }

    /// Takes or keeps the lease on forming this rule queue for `ttl`: whether this `instance`
    /// holds it now.
    pub async fn lease(&self, instance: &str, ttl: Duration) -> Result<bool> {
        self.store.lease(&self.keys.lease, instance, ttl).await
    }

    /// Every ticket waiting in this rule queue, head first (read in pages, not atomically: a
    /// plan made from it commits only what is still current).
    pub async fn waiting_tickets(&self) -> Result<Vec<StoredTicket>> {
        const PAGE: isize = 2000;
        let q = &self.keys;
        let mut conn = self.store.conn();
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let page: Vec<(String, f64)> = conn.zrange_withscores(&q.queue, start, start + PAGE - 1).await?;
            if page.is_empty() {
                break;
            }
            let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
            let (joined, docs): (Vec<Option<i64>>, Vec<Option<String>>) = redis::pipe()
                .cmd("HMGET")
                .arg(&q.joined)
                .arg(&ids)
                .cmd("HMGET")
                .arg(&q.tickets)
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
            let full = page.len() as isize == PAGE;
            for (((id, order), joined), doc) in page.into_iter().zip(joined).zip(docs) {
                // Gone between the reads: placed or cancelled meanwhile.
                if let (Some(joined_ms), Some(doc)) = (joined, doc) {
                    out.push(StoredTicket {
                        id,
                        order,
                        joined_ms,
                        doc,
                    });
                }
            }
            if !full {
                break;
            }
            start += PAGE;
        }
        Ok(out)
    }

    /// Commits a plan for this rule queue (see the place script).
    pub async fn place(&self, plan: &str, now_ms: i64, instance: &str) -> Result<Placed> {
        let k = self.store.keys();
        let q = &self.keys;
        let Json(placed) = PLACE
            .key(&q.queue)
            .key(&q.joined)
            .key(&q.tickets)
            .key(k.waiting())
            .key(k.live())
            .key(k.outbox())
            .key(k.player_session())
            .key(k.sessions())
            .key(k.timed_out())
            .key(k.backfill())
            .arg(&self.name)
            .arg(now_ms)
            .arg(instance)
            .arg(k.events())
            .arg(plan)
            .invoke_async(&mut self.store.conn())
            .await?;
        Ok(placed)
    }

    /// Tickets waiting in this queue (a party is one).
    pub async fn depth(&self) -> Result<u64> {
        self.store.conn().zcard(&self.keys.queue).await
    }

    /// This queue in order, head first (for tests and operators).
    pub async fn tickets(&self) -> Result<Vec<String>> {
        self.store.conn().zrange(&self.keys.queue, 0, -1).await
    }
}
