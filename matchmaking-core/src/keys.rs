//! Every Redis key and channel name the backend uses, in one place.
//!
//! All of a deployment's keys carry one hash tag, `{P}` for `REDIS_KEY_PREFIX` = `P`, so they
//! share a Redis Cluster slot: a script may touch any of them together, and every script is
//! handed each key it touches in `KEYS` (none builds a key name itself). When queues get keys
//! of their own, each queue's keys can move to a tag of their own here.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{P}:queue` | zset | the `default` queue: ticket → order; requeued tickets get lower scores (the head) |
//! | `{P}:queue:<Q>` | zset | queue `Q`, the same way |
//! | `{P}:joined`, `{P}:joined:<Q>` | hash | ticket → join time (ms) while queued |
//! | `{P}:tickets:<Q>` | hash | a rule queue's ticket → its document (`{"v", "players", "attributes"}`) |
//! | `{P}:lease:<Q>` | string | the replica forming rule queue `Q` now, with a TTL |
//! | `{P}:warm:lease` | string | the replica keeping the cluster's warm Pods now, with a TTL |
//! | `{P}:waiting` | hash | player → `<queue>\|<ticket>\|<joined ms>` while queued (a ticket is its leader's id) |
//! | `{P}:seq` | string | the join counter (also each rule ticket's version) |
//! | `{P}:player_session` | hash | player → current (or last) session id, or `timed_out\|<queue>\|<ms>` |
//! | `{P}:timed_out` | zset | player → when its ticket timed out, to prune those pointers |
//! | `{P}:sessions` | hash | session id → session record (JSON; the contract with the proxy) |
//! | `{P}:live` | zset | session id → created ms, for sessions not yet ended |
//! | `{P}:ended` | zset | session id → ended ms, until the record is pruned |
//! | `{P}:outbox` | stream | lifecycle events, one JSON `event` field each, for the history |
//! | `{P}:outbox:dead` | stream | events PostgreSQL kept rejecting, parked for an operator |
//! | `{P}:instance:<id>` | string | a replica's heartbeat, with a TTL |
//! | `{P}:warm-server:<id>` | hash | a warm server of a profile: `polled` (ms of its last poll), `session` (JSON, once offered), `taken` (ms); a minute's TTL from the last write |
//! | `{P}:server:<sid>` | hash | what session `sid`'s server said through the SDK: `ready`, `health` → ms; an hour's TTL from the last |
//! | `{P}:events` | pub/sub channel | the same lifecycle events, for long polls and supervisors |
//! | `{P}:stats:<t>` | hash | what every replica counted in the 10 s from Unix second `t` (the console's rates and percentiles); 20 minutes' TTL |
//! | `{P}:replicas` | hash | replica id → its last report (`GET /health` and when), for operators; pruned 15 minutes after the last |
//! | `{P}:failures` | list | the latest 200 session failures (JSON), newest first |
//! | `{P}:versions` | hash | a server profile's name → its versions' weights and drains as operators last set them (JSON) |
//! | `{P}:backfill` | hash | a running session's id → its open backfill request (JSON: its queue, open slots per team, since when, and what a newcomer must match) |
//! | `{P}:console:<h>` | string | a console sign-in, `h` the SHA-256 of its cookie; expires with it |

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    pub queue: String,
    pub joined: String,
    pub tickets: String,
    pub lease: String,
}

/// The key names of one deployment (one `REDIS_KEY_PREFIX`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    tag: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            tag: format!("{{{prefix}}}"),
        }
    }

    fn named(&self, name: &str) -> String {
        format!("{}:{name}", self.tag)
    }

    /// The `default` queue.
    pub fn queue(&self) -> String {
        self.named("queue")
    }

    /// The `default` queue's join times.
    pub fn joined(&self) -> String {
        self.named("joined")
    }

    /// The keys of queue `name` (the `default` queue keeps the names it always had).
    pub fn of_queue(&self, name: &str) -> QueueKeys {
        if name == crate::queues::DEFAULT_QUEUE {
            QueueKeys {
                queue: self.queue(),
                joined: self.joined(),
                tickets: self.named("tickets"),
                lease: self.named("lease"),
            }
        } else {
            QueueKeys {
                queue: self.named(&format!("queue:{name}")),
                joined: self.named(&format!("joined:{name}")),
                tickets: self.named(&format!("tickets:{name}")),
                lease: self.named(&format!("lease:{name}")),
            }
        }
    }

    /// The lease on keeping the warm Pod pool (one replica sizes it at a time).
    pub fn warm_lease(&self) -> String {
        self.named("warm:lease")
    }

    pub fn waiting(&self) -> String {
        self.named("waiting")
    }

    pub fn timed_out(&self) -> String {
        self.named("timed_out")
    }

    pub fn seq(&self) -> String {
        self.named("seq")
    }

    pub fn player_session(&self) -> String {
        self.named("player_session")
    }

    pub fn sessions(&self) -> String {
        protocol::sessions::sessions_key(&self.prefix)
    }

    pub fn live(&self) -> String {
        self.named("live")
    }

    pub fn ended(&self) -> String {
        self.named("ended")
    }

    pub fn outbox(&self) -> String {
        self.named("outbox")
    }

    pub fn outbox_dead(&self) -> String {
        self.named("outbox:dead")
    }

    /// A warm server of a profile, taking its session through the SDK.
    pub fn warm_server(&self, id: &str) -> String {
        self.named(&format!("warm-server:{id}"))
    }

    /// What session `sid`'s server has said through the SDK.
    pub fn server_signals(&self, sid: &str) -> String {
        self.named(&format!("server:{sid}"))
    }

    pub fn instance(&self, id: &str) -> String {
        self.named(&format!("instance:{id}"))
    }

    /// The pub/sub channel of lifecycle events.
    pub fn events(&self) -> String {
        self.named("events")
    }

    /// What every replica counted in the 10 s slot from Unix second `slot_start`.
    pub fn stats(&self, slot_start: i64) -> String {
        self.named(&format!("stats:{slot_start}"))
    }

    /// The replicas' last reports.
    pub fn replicas(&self) -> String {
        self.named("replicas")
    }

    /// The latest session failures.
    pub fn failures(&self) -> String {
        self.named("failures")
    }

    /// Operators' weights and drains of profiles' versions.
    pub fn versions(&self) -> String {
        self.named("versions")
    }

    /// Running sessions' open backfill requests.
    pub fn backfill(&self) -> String {
        self.named("backfill")
    }

    /// A console sign-in, by the SHA-256 (hex) of its cookie.
    pub fn console(&self, digest: &str) -> String {
        self.named(&format!("console:{digest}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_carries_the_deployment_tag() {
        let keys = super::Keys::new("mp");
        for key in [
            keys.queue(),
            keys.joined(),
            keys.seq(),
            keys.player_session(),
            keys.sessions(),
            keys.live(),
            keys.ended(),
            keys.outbox(),
            keys.outbox_dead(),
            keys.instance("a"),
            keys.events(),
            keys.waiting(),
            keys.timed_out(),
            keys.of_queue("ranked").queue,
            keys.of_queue("ranked").tickets,
            keys.of_queue("ranked").lease,
            keys.stats(1_700_000_000),
            keys.replicas(),
            keys.failures(),
            keys.console("ab"),
            keys.versions(),
            keys.backfill(),
        ] {
            assert!(key.starts_with("{mp}:"), "{key}");
        }
        assert_eq!(
            keys.of_queue("default").queue,
            keys.queue(),
            "the default queue keeps its keys"
        );
        assert_eq!(keys.of_queue("ranked").joined, "{mp}:joined:ranked");
    }
}
