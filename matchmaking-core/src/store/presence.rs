//! Who is connected to each session's server: the proxy records every player's connection (or
//! UDP flow) as it opens and closes, and the session's record then lists the players connected
//! now (`connected`) and since when nobody has been (`empty_since_ms`), while the history gets
//! each player's connect and leave times. Any server is seen this way, with no SDK.

use redis::aio::ConnectionLike;

use super::{Json, PRESENCE, Result};
use crate::keys::Keys;

/// What recording a connection's change found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Counted {
    /// No such session, or the player is not in its roster: nothing recorded.
    Unknown,
    /// Recorded: `connected` players are connected now.
    Counted { connected: usize },
}

/// Records connections of a deployment's sessions (the proxy's side). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence {
    keys: Keys,
}

impl Presence {
    /// For the deployment whose keys start with `prefix` (`REDIS_KEY_PREFIX`).
    pub fn new(prefix: &str) -> Presence {
        Presence {
            keys: Keys::new(prefix),
        }
    }

    /// `player`'s connection to session `sid`'s server opened (`opened`) or closed, at `now_ms`.
    pub async fn record<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        sid: &str,
        player: &str,
        opened: bool,
        now_ms: i64,
    ) -> Result<Counted> {
        let Json(counted) = PRESENCE
            .key(self.keys.sessions())
            .key(self.keys.outbox())
            .arg(sid)
            .arg(player)
            .arg(if opened { 1 } else { -1 })
            .arg(now_ms)
            .arg(self.keys.events())
            .invoke_async(conn)
            .await?;
        Ok(counted)
    }
}
