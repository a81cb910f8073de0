//! Tickets: what a join may carry into its queue, and the document a rule queue keeps for each
//! ticket in Redis, decoded back for the former.
//!
//! A player's own join may set only its queue's `client_attributes` (typically measured
//! latencies); its skill comes from the token claim the queue names. Services and operators
//! may set every attribute the queue reads and bring a party. Everything is checked here,
//! before Redis is touched: a bad join changes nothing.

use protocol::api::JoinRequest;
use protocol::player::is_valid_player_id;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::forming;
use crate::queues::{Queue, is_valid_name};
use crate::store::StoredTicket;

/// Most regions in one latency map.
const MAX_REGIONS: usize = 32;
/// Longest string attribute.
const MAX_STRING: usize = 128;

/// Who is joining.
#[derive(Debug, Clone, Copy)]
pub enum Joiner<'a> {
    /// The player itself, with its token's claims (none with `PLAYER_AUTH=none`).
    Player(Option<&'a Map<String, Value>>),
    /// A service or an operator.
    Service,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The caller may not set this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The join does not fit its queue (422).
    #[error("{0}")]
    Invalid(String),
}

/// A checked ticket: its players (the leader first) and, in a rule queue, its document.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTicket {
    pub players: Vec<String>,
    pub doc: Option<String>,
}

/// A rule queue's ticket document. `v` (the version) is written by the join script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    #[serde(default, skip_serializing)]
    v: u64,
    players: Vec<String>,
    attributes: Vec<Map<String, Value>>,
}

/// Checks `request` against `queue` for `joiner`.
pub fn check(queue: &Queue, request: &JoinRequest, joiner: Joiner<'_>) -> Result<NewTicket, TicketError> {
    let invalid = |m: String| Err(TicketError::Invalid(m));
    let q = &queue.name;
    let mut players = vec![request.player_id.clone()];
    let mut attributes = vec![request.attributes.clone().unwrap_or_default()];
    if let Some(party) = &request.party {
        if matches!(joiner, Joiner::Player(_)) {
            return Err(TicketError::Forbidden(
                "only a service may join a party: parties decide fairness".into(),
            ));
        }
        for member in party {
            if !is_valid_player_id(&member.player_id) {
                return invalid("party: every player_id must be 1-128 characters of A-Z a-z 0-9 _ . : -".into());
            }
            if players.contains(&member.player_id) {
                return invalid(format!("party: {} is named twice", member.player_id));
            }
            players.push(member.player_id.clone());
            attributes.push(member.attributes.clone().unwrap_or_default());
        }
    }
    if players.len() > queue.max_party as usize {
        return invalid(if queue.max_party == 1 {
            format!("queue {q} takes no parties")
        } else {
            format!("queue {q} takes parties of at most {}", queue.max_party)
        });
    }
    for (player, attrs) in players.iter().zip(&attributes) {
        for (name, value) in attrs {
            if !queue.knows_attribute(name) {
                return invalid(format!("queue {q} has no attribute {name:?} ({player})"));
            }
            if matches!(joiner, Joiner::Player(_)) && !queue.client_attributes.contains(name) {
                return Err(TicketError::Forbidden(format!(
                    "a player's own join may set only {} in queue {q}, not {name:?}",
                    if queue.client_attributes.is_empty() {
                        "no attributes".to_owned()
                    } else {
                        queue.client_attributes.join(", ")
                    }
                )));
            }
            check_value(queue, name, value).map_err(|m| TicketError::Invalid(format!("{player}: {m}")))?;
        }
    }
    if let Some(skill) = &queue.skill {
        if let (Joiner::Player(claims), Some(claim)) = (joiner, &skill.claim) {
            match claims.and_then(|c| c.get(claim)).and_then(Value::as_f64) {
                Some(value) if value.is_finite() => {
                    attributes[0].insert(skill.attribute.clone(), Value::from(value));
                }
                _ => {
                    return invalid(format!(
                        "queue {q} takes skill from the player token's {claim:?} claim, and the token has no number there"
                    ));
                }
            }
        }
        for (player, attrs) in players.iter().zip(&attributes) {
            if !attrs.get(&skill.attribute).is_some_and(Value::is_number) {
                return invalid(match joiner {
                    Joiner::Service => format!("queue {q} needs {:?} (a number) for {player}", skill.attribute),
                    Joiner::Player(_) => format!(
                        "queue {q} needs a skill from a service{}",
                        if skill.claim.is_some() {
                            ""
                        } else {
                            " (it names no token claim)"
                        }
                    ),
                });
            }
        }
    }
    if let Some(latency) = &queue.latency {
        for (player, attrs) in players.iter().zip(&attributes) {
            if attrs
                .get(&latency.attribute)
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
            {
                return invalid(format!(
                    "queue {q} needs {:?} (region -> ms) for {player}",
                    latency.attribute
                ));
            }
        }
    }
    for name in &queue.match_on {
        let Some(leader) = attributes[0].get(name).cloned() else {
            return invalid(format!("queue {q} needs {name:?} (a string)"));
        };
        for (player, attrs) in players.iter().zip(attributes.iter_mut()).skip(1) {
            match attrs.get(name) {
                Some(value) if *value != leader => {
                    return invalid(format!("party: {player} has another {name:?} than its leader"));
                }
                Some(_) => {}
                None => {
                    attrs.insert(name.clone(), leader.clone());
                }
            }
        }
    }
    let doc = (!queue.is_plain()).then(|| {
        serde_json::to_string(&Doc {
            v: 0,
            players: players.clone(),
            attributes,
        })
        .expect("strings, numbers and maps encode")
    });
    Ok(NewTicket { players, doc })
}

/// Checks one attribute's value for the rule that reads it.
fn check_value(queue: &Queue, name: &str, value: &Value) -> Result<(), String> {
    let finite = |v: &Value| v.as_f64().is_some_and(f64::is_finite);
    if queue.match_on.iter().any(|m| m == name) {
        return match value.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_STRING => Ok(()),
            _ => Err(format!("{name:?} must be a string of 1-{MAX_STRING} bytes")),
        };
    }
    if queue.skill.as_ref().is_some_and(|s| s.attribute == name) {
        return if finite(value) {
            Ok(())
        } else {
            Err(format!("{name:?} must be a number"))
        };
    }
    if queue.latency.as_ref().is_some_and(|l| l.attribute == name) {
        let map = value
            .as_object()
            .ok_or_else(|| format!("{name:?} must map regions to milliseconds"))?;
        if map.is_empty() || map.len() > MAX_REGIONS {
            return Err(format!("{name:?} must name 1 to {MAX_REGIONS} regions"));
        }
        for (region, ms) in map {
            if !is_valid_name(region) {
                return Err(format!(
                    "{name:?}: {region:?} is not a region name (1-64 of A-Z a-z 0-9 _ -)"
                ));
            }
            if !(finite(ms) && ms.as_f64().is_some_and(|m| (0.0..=60_000.0).contains(&m))) {
                return Err(format!("{name:?}: {region} must be 0 to 60000 ms"));
            }
        }
        return Ok(());
    }
    // A client attribute no rule reads: kept, if it is small.
    match value {
        Value::String(s) if s.len() <= MAX_STRING => Ok(()),
        Value::Number(_) if finite(value) => Ok(()),
        _ => Err(format!(
            "{name:?} must be a string of at most {MAX_STRING} bytes or a number"
        )),
    }
}

/// The former's view of a stored ticket; `None` (logged) if its document does not decode.
pub fn decode(queue: &Queue, stored: &StoredTicket) -> Option<forming::Ticket> {
    let doc: Doc = match serde_json::from_str(&stored.doc) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!(queue = %queue.name, ticket = %stored.id, error = %e, "a ticket document does not decode");
            return None;
        }
    };
    let number = |attrs: &Map<String, Value>, name: &str| attrs.get(name).and_then(Value::as_f64);
    let skills = match &queue.skill {
        Some(skill) => doc
            .attributes
            .iter()
            .map(|a| number(a, &skill.attribute).unwrap_or(0.0))
            .collect(),
        None => Vec::new(),
    };
    let latencies = match &queue.latency {
        Some(latency) => doc
            .attributes
            .iter()
            .map(|a| {
                a.get(&latency.attribute)
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(region, ms)| Some((region.clone(), ms.as_f64()?)))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect(),
        None => Vec::new(),
    };
    let leader = doc.attributes.first();
    let match_key = queue
        .match_on
        .iter()
        .map(|m| {
            leader
                .and_then(|a| a.get(m))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    Some(forming::Ticket {
        id: stored.id.clone(),
        version: doc.v,
        order: stored.order,
        joined_ms: stored.joined_ms,
        players: doc.players,
        skills,
        latencies,
        match_key,
    })
}

#[cfg(test)]
mod tests {
    use protocol::api::PartyMember;
    use serde_json::json;

    use super::*;
    use crate::queues::Queues;

    fn ranked() -> Queue {
        Queues::parse(
            "queues:
  - name: r
    teams: 2
    team_size: 2
    max_party_size: 2
    match_on: [mode]
    skill: {attribute: skill, claim: mmr, max_spread: 100}
    latency: {attribute: latency_ms, max_ms: 60}
    client_attributes: [latency_ms, mode]",
        )
        .unwrap()
        .get("r")
        .unwrap()
        .clone()
    }

    fn join(body: Value) -> JoinRequest {
        serde_json::from_value(body).unwrap()
    }

    fn attrs(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_players_join_takes_skill_from_its_claim_and_sets_only_client_attributes() {
        let q = ranked();
        let claims = attrs(json!({"sub": "a", "mmr": 1620}));
        let body = join(json!({"player_id": "a", "queue": "r",
            "attributes": {"mode": "ctf", "latency_ms": {"eu": 20, "us": 90}}}));
        let ticket = check(&q, &body, Joiner::Player(Some(&claims))).unwrap();
        assert_eq!(ticket.players, ["a"]);
        let stored = StoredTicket {
            id: "a".into(),
            order: 1.0,
            joined_ms: 5,
            doc: ticket.doc.unwrap().replacen('{', "{\"v\":7,", 1),
        };
        let decoded = decode(&q, &stored).unwrap();
        assert_eq!(decoded.version, 7);
        assert_eq!(decoded.skills, [1620.0]);
        assert_eq!(decoded.match_key, ["ctf"]);
        assert_eq!(decoded.latencies[0].len(), 2);

        let cheat =
            join(json!({"player_id": "a", "attributes": {"skill": 3000, "mode": "ctf", "latency_ms": {"eu": 1}}}));
        assert!(matches!(
            check(&q, &cheat, Joiner::Player(Some(&claims))),
            Err(TicketError::Forbidden(_))
        ));
        let no_claim = attrs(json!({"sub": "a"}));
        assert!(
            matches!(check(&q, &body, Joiner::Player(Some(&no_claim))), Err(TicketError::Invalid(m)) if m.contains("\"mmr\" claim"))
        );
        let party = JoinRequest {
            party: Some(vec![PartyMember {
                player_id: "b".into(),
                attributes: None,
            }]),
            ..body.clone()
        };
        assert!(matches!(
            check(&q, &party, Joiner::Player(Some(&claims))),
            Err(TicketError::Forbidden(_))
        ));
    }

    #[test]
    fn a_service_brings_parties_with_every_attribute() {
        let q = ranked();
        let lat = json!({"eu": 30});
        let body = join(json!({"player_id": "a", "queue": "r",
            "attributes": {"mode": "ctf", "skill": 1500, "latency_ms": lat},
            "party": [{"player_id": "b", "attributes": {"skill": 1700, "latency_ms": lat}}]}));
        let ticket = check(&q, &body, Joiner::Service).unwrap();
        assert_eq!(ticket.players, ["a", "b"]);
        let doc: Value = serde_json::from_str(ticket.doc.as_deref().unwrap()).unwrap();
        assert_eq!(
            doc["attributes"][1]["mode"], "ctf",
            "members share the leader's match_on values"
        );

        let bad = [
            (
                json!({"player_id": "a", "attributes": {"mode": "ctf", "skill": 1, "latency_ms": lat}}),
                "ok",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "ctf", "latency_ms": lat}}),
                "needs \"skill\"",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "ctf", "skill": 1}}),
                "needs \"latency_ms\"",
            ),
            (
                json!({"player_id": "a", "attributes": {"skill": 1, "latency_ms": lat}}),
                "needs \"mode\"",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": 3, "skill": 1, "latency_ms": lat}}),
                "must be a string",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "x", "skill": "high", "latency_ms": lat}}),
                "must be a number",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "x", "skill": 1, "latency_ms": {"eu": -1}}}),
                "0 to 60000",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "x", "skill": 1, "latency_ms": {"e u": 1}}}),
                "not a region",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "x", "skill": 1, "latency_ms": lat, "color": "red"}}),
                "no attribute \"color\"",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "x", "skill": 1, "latency_ms": lat},
                "party": [{"player_id": "b"}, {"player_id": "c"}]}),
                "at most 2",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "x", "skill": 1, "latency_ms": lat},
                "party": [{"player_id": "a"}]}),
                "named twice",
            ),
            (
                json!({"player_id": "a", "attributes": {"mode": "x", "skill": 1, "latency_ms": lat},
                "party": [{"player_id": "b", "attributes": {"mode": "y", "skill": 1, "latency_ms": lat}}]}),
                "another \"mode\"",
            ),
        ];
        for (body, want) in bad {
            match check(&q, &join(body.clone()), Joiner::Service) {
                Ok(_) => assert_eq!(want, "ok", "{body}"),
                Err(e) => assert!(e.to_string().contains(want), "{body}: {e}"),
            }
        }
    }

    #[test]
    fn the_default_queue_takes_plain_joins_only() {
        let q = Queue::fifo(
            "default",
            crate::store::FormRules {
                size: 2,
                min_partial: 2,
                flush_wait_ms: 0,
            },
        );
        let ticket = check(&q, &JoinRequest::player("a"), Joiner::Player(None)).unwrap();
        assert_eq!(
            ticket,
            NewTicket {
                players: vec!["a".into()],
                doc: None
            }
        );
        let with = join(json!({"player_id": "a", "attributes": {"skill": 1}}));
        assert!(check(&q, &with, Joiner::Service).is_err());
        let party = join(json!({"player_id": "a", "party": [{"player_id": "b"}]}));
        assert_eq!(
            check(&q, &party, Joiner::Service).unwrap_err(),
            TicketError::Invalid("queue default takes no parties".into())
        );
    }
}
