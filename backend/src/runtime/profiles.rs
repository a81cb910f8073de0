//! Server profiles: how the sessions of a queue run their game server.
//!
//! A profile names a server program (a command for the local runtime, an image for the
//! Kubernetes runtime), the ports it serves, how matchplane sees it become ready, how the proxy
//! tells it who each player is, how its session ends, and the caps matchplane enforces. They are
//! read from the `servers` mapping of the queue file (`MATCHMAKING_CONFIG`), and each queue names
//! its profile with `server:`. The built-in game server is the profile `game-server`, the one a
//! queue without `server:` uses, and behaves exactly as it always has.
//!
//! Loading checks the whole mapping and reports every mistake, one line each, together with
//! the queues' own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use matchmaking_core::queues::{Queues, is_valid_name};
use protocol::sessions::Identity;
use serde::Deserialize;

use crate::runtime::warm::Bounds;

/// The built-in game server's profile name.
pub const BUILTIN: &str = "game-server";
/// Most profiles in one file, and most ports of one profile.
const MAX_PROFILES: usize = 64;
const MAX_PORTS: usize = 8;
/// The longest a session may be capped at: a week.
const MAX_CAP_SECONDS: f64 = 7.0 * 86_400.0;
/// The built-in server drains and reports within 10 s of SIGTERM.
const BUILTIN_STOP_GRACE: Duration = Duration::from_secs(15);
/// A profile's stop grace when it names none.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// A port's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// One port a server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// As the profile names it (`game`).
    pub name: String,
    pub protocol: PortProtocol,
    /// The port inside a Pod (the kubernetes runtime); the local runtime picks a free one.
    pub container_port: u16,
}

impl Port {
    /// The variable handing the port to the server: `MATCHPLANE_PORT_<NAME>`.
    pub fn variable(&self) -> String {
        format!("MATCHPLANE_PORT_{}", env_word(&self.name))
    }
}

/// `name` as an environment variable word: upper case, `-` as `_`.
fn env_word(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// How matchplane sees a server become ready.
#[derive(Debug, Clone)]
pub enum Ready {
    /// The built-in server's `LISTENING <ip:port>` line.
    Listening,
    /// Every declared port is bound by the server.
    Port,
    /// A line of its output matches.
    Log(regex::Regex),
    /// The server says so through the SDK.
    Sdk,
}

impl Ready {
    pub fn as_str(&self) -> &'static str {
        match self {
            Ready::Listening => "listening",
            Ready::Port => "port",
            Ready::Log(_) => "log",
            Ready::Sdk => "sdk",
        }
    }
}

/// How a session's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// The process exits: 0 is `completed`, anything else `failed`.
    Exit,
    /// The server reports its result with its report token, then exits.
    Sdk,
}

/// One validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// The built-in game server (its binary is `GAME_SERVER_BIN`, its settings the backend's).
    pub builtin: bool,
    /// The program and its arguments (local runtime), `${VAR}` not yet replaced.
    pub command: Vec<String>,
    /// The container image (kubernetes runtime).
    pub image: Option<String>,
    pub ports: Vec<Port>,
    pub ready: Ready,
    pub identity: Identity,
    pub ends: Ends,
    /// Stopped once it has run this long.
    pub max_session: Option<Duration>,
    /// Stopped once no player has been connected this long.
    pub empty_grace: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Failed once it has made no SDK health call (nor become ready) for this long.
    pub health_timeout: Option<Duration>,
    /// Warm servers of this profile (each replica's with `RUNTIME=local`, the cluster's with
    /// `RUNTIME=kubernetes`): started without a session, each takes one through the SDK.
    pub warm: Option<Bounds>,
    /// Further environment, `${VAR}` not yet replaced.
    pub env: Vec<(String, String)>,
    /// The version this is, for one of a profile's `versions` (its command or image in
    /// place of the profile's).
    pub version: Option<String>,
    /// A profile's versions, each a whole profile, with their weights (empty without).
    pub versions: Vec<Version>,
}

/// One version of a profile.
#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    /// Its share of new sessions: `weight` out of every version's together.
    pub weight: u32,
    pub profile: Arc<Profile>,
}

/// The attribute that pins players to a version: a queue with it in `match_on` keeps players
/// with servers of their own client's version.
pub const CLIENT_VERSION: &str = "client_version";

/// Most versions of one profile, and the largest weight.
const MAX_VERSIONS: usize = 16;
const MAX_WEIGHT: u32 = 1000;

/// Chooses a version for each new session in proportion to the weights, deterministically
/// (smooth weighted round robin): after any `n` choices each version has been chosen within
/// one of `n * weight / total` times.
#[derive(Debug)]
pub struct Picker {
    /// The weights in force, and each version's running credit.
    state: std::sync::Mutex<(Vec<i64>, Vec<i64>)>,
    /// Which versions drain (they take no session, pinned ones included).
    draining: std::sync::Mutex<Vec<bool>>,
}

impl Picker {
    pub fn new(weights: &[u32]) -> Picker {
        Picker {
            state: std::sync::Mutex::new((weights.iter().map(|w| i64::from(*w)).collect(), vec![0; weights.len()])),
            draining: std::sync::Mutex::new(vec![false; weights.len()]),
        }
    }

    /// Marks which versions drain.
    pub fn set_draining(&self, draining: &[bool]) {
        let mut current = self.draining.lock().expect("picker lock");
        if current.len() == draining.len() {
            current.copy_from_slice(draining);
        }
    }

    /// Whether version `index` drains.
    pub fn drains(&self, index: usize) -> bool {
        self.draining
            .lock()
            .expect("picker lock")
            .get(index)
            .copied()
            .unwrap_or(false)
    }

    /// The index of the next version.
    pub fn pick(&self) -> usize {
        let mut state = self.state.lock().expect("picker lock");
        let (weights, current) = &mut *state;
        let total: i64 = weights.iter().sum();
        let mut best = 0;
        for (i, weight) in weights.iter().enumerate() {
            current[i] += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }

    /// The weights in force.
    pub fn weights(&self) -> Vec<u32> {
        let state = self.state.lock().expect("picker lock");
        state.0.iter().map(|w| u32::try_from(*w).unwrap_or(0)).collect()
    }

    /// Puts `weights` in force from the next choice (the split starts over), unless they are
    /// in force already or none is above 0.
    pub fn set_weights(&self, weights: &[u32]) -> bool {
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(*w)).collect();
        let mut state = self.state.lock().expect("picker lock");
        if state.0 == weights || weights.len() != state.0.len() || weights.iter().all(|w| *w == 0) {
            return false;
        }
        *state = (weights, vec![0; state.1.len()]);
        true
    }
}

impl Profile {
    /// The built-in game server.
    pub fn builtin() -> Profile {
        Profile {
            name: BUILTIN.to_owned(),
            builtin: true,
            command: Vec::new(),
            image: None,
            ports: vec![Port {
                name: "game".into(),
                protocol: PortProtocol::Tcp,
                container_port: protocol::server::DEFAULT_PORT,
            }],
            ready: Ready::Listening,
            identity: Identity::JoinLine,
            ends: Ends::Sdk,
            max_session: None,
            empty_grace: None,
            stop_grace: BUILTIN_STOP_GRACE,
            health_timeout: None,
            warm: None,
            env: Vec::new(),
            version: None,
            versions: Vec::new(),
        }
    }

    /// Its first port of `protocol`, the one the proxy routes that protocol to.
    pub fn first(&self, protocol: PortProtocol) -> Option<&Port> {
        self.ports.iter().find(|p| p.protocol == protocol)
    }

    /// Whether a warm server of this profile could be handed a session: the built-in server,
    /// and a profile's with a `warm_pool` (it takes its session through the SDK). Every other
    /// profile starts cold.
    pub fn can_be_warm(&self) -> bool {
        self.builtin || self.warm.is_some()
    }
}

/// What the chosen runtime needs of a profile, for the checks that depend on it.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Child processes: every command must be an executable file (bare names in `path`).
    Local { path: Option<&'a OsStr> },
    /// Pods: every profile needs an image, and readiness the kubelet can see.
    Kubernetes,
    /// `RUNTIME=none`: no server ever starts.
    None,
}

/// Every profile of a deployment, and which queue runs which. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Profiles {
    builtin: Arc<Profile>,
    by_name: BTreeMap<String, Arc<Profile>>,
    by_queue: HashMap<String, Arc<Profile>>,
    /// The version choosers of the profiles with versions, by profile name.
    pickers: HashMap<String, Arc<Picker>>,
}

impl Profiles {
    /// Only the built-in server, for every queue.
    pub fn builtin_only() -> Profiles {
        let builtin = Arc::new(Profile::builtin());
        Profiles {
            by_name: BTreeMap::from([(BUILTIN.to_owned(), builtin.clone())]),
            builtin,
            by_queue: HashMap::new(),
            pickers: HashMap::new(),
        }
    }

    /// The profile `queue`'s sessions run (a profile with versions: as the profile itself).
    pub fn for_queue(&self, queue: &str) -> Arc<Profile> {
        self.by_queue.get(queue).unwrap_or(&self.builtin).clone()
    }

    /// The version chooser of profile `name`, when it has versions.
    pub fn picker(&self, name: &str) -> Option<&Arc<Picker>> {
        self.pickers.get(name)
    }

    /// What `queue`'s next session runs: its profile, or the version of it the weights
    /// choose.
    pub fn pick(&self, queue: &str) -> Arc<Profile> {
        self.pick_for(queue, None)
    }

    /// What a session of `queue` whose players' `client_version` is `pinned` runs: that
    /// version of the queue's profile when it has one of the name, else as [`Profiles::pick`].
    pub fn pick_for(&self, queue: &str, pinned: Option<&str>) -> Arc<Profile> {
        let profile = self.for_queue(queue);
        if let Some(version) = pinned.and_then(|name| profile.versions.iter().find(|v| v.name == name)) {
            return version.profile.clone();
        }
        match self.pickers.get(&profile.name) {
            Some(picker) => profile.versions[picker.pick()].profile.clone(),
            None => profile,
        }
    }

    /// Whether `queue` takes players of client version `version` now: its profile must have
    /// that version, and it must not drain. The error says which versions it takes.
    pub fn takes_client_version(&self, queue: &str, version: &str) -> Result<(), String> {
        let profile = self.for_queue(queue);
        let picker = self.pickers.get(&profile.name);
        let taking: Vec<&str> = profile
            .versions
            .iter()
            .enumerate()
            .filter(|(i, _)| !picker.is_some_and(|p| p.drains(*i)))
            .map(|(_, v)| v.name.as_str())
            .collect();
        if taking.contains(&version) {
            Ok(())
        } else {
            Err(format!(
                "queue {queue:?} has no server of client_version {version:?} now (it serves {})",
                if taking.is_empty() {
                    "none".to_owned()
                } else {
                    taking.join(", ")
                }
            ))
        }
    }

    /// The profile named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.by_name.get(name)
    }

    /// Every profile, the built-in one included, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.by_name.values()
    }

    /// The `servers` mapping of the queue file `text` (already parsed into `queues`), checked
    /// for `target`: every mistake is one entry, and so is every queue naming a profile that
    /// does not exist.
    pub fn parse(text: &str, queues: Option<&Queues>, target: Target<'_>) -> Result<Profiles, Vec<String>> {
        let file: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| vec![format!("not YAML: {e}")])?;
        let mut mistakes = Vec::new();
        let mut profiles = Profiles::builtin_only();
        match file.get("servers") {
            None | Some(serde_yaml::Value::Null) => {}
            Some(serde_yaml::Value::Mapping(map)) => {
                if map.len() > MAX_PROFILES {
                    mistakes.push(format!("{} server profiles: at most {MAX_PROFILES}", map.len()));
                }
                for (key, item) in map {
                    let Some(name) = key.as_str() else {
                        mistakes.push("servers: a profile's name must be a string".into());
                        continue;
                    };
                    let label = format!("server {name:?}");
                    let before = mistakes.len();
                    let mut mistake = |m: String| mistakes.push(format!("{label}: {m}"));
                    if name == BUILTIN {
                        // The built-in server takes only versions: its builds side by side.
                        match serde_yaml::from_value::<BuiltinSpec>(item.clone()) {
                            Ok(spec) => {
                                if let Some(builtin) = spec.check(target, &mut mistake) {
                                    let weights: Vec<u32> = builtin.versions.iter().map(|v| v.weight).collect();
                                    profiles
                                        .pickers
                                        .insert(BUILTIN.to_owned(), Arc::new(Picker::new(&weights)));
                                    let builtin = Arc::new(builtin);
                                    profiles.by_name.insert(BUILTIN.to_owned(), builtin.clone());
                                    profiles.builtin = builtin;
                                }
                            }
                            Err(e) => mistake(format!(
                                "{e} ({BUILTIN} is the built-in game server's profile: it takes only `versions`; give a profile of yours another name)"
                            )),
                        }
                        continue;
                    }
                    if !is_valid_name(name) {
                        mistake("the name must be 1-64 characters of A-Z a-z 0-9 _ -".into());
                    }
                    let spec: ProfileSpec = match serde_yaml::from_value(item.clone()) {
                        Ok(spec) => spec,
                        Err(e) => {
                            mistake(e.to_string());
                            continue;
                        }
                    };
                    let profile = spec.check(name, target, &mut |m: String| mistakes.push(format!("{label}: {m}")));
                    if mistakes.len() == before {
                        if !profile.versions.is_empty() {
                            let weights: Vec<u32> = profile.versions.iter().map(|v| v.weight).collect();
                            profiles
                                .pickers
                                .insert(name.to_owned(), Arc::new(Picker::new(&weights)));
                        }
                        profiles.by_name.insert(name.to_owned(), Arc::new(profile));
                    }
                }
            }
            Some(_) => mistakes.push("`servers` must be a mapping of profile names to profiles".into()),
        }
        // A profile the file declares but that is not among the valid ones had mistakes of its own.
        let declared = |name: &str| {
            file.get("servers")
                .and_then(serde_yaml::Value::as_mapping)
                .is_some_and(|map| map.contains_key(name))
        };
        for queue in queues.iter().flat_map(|q| q.iter()) {
            let Some(name) = &queue.server else { continue };
            match profiles.by_name.get(name) {
                Some(profile) => {
                    profiles.by_queue.insert(queue.name.clone(), profile.clone());
                }
                // That profile's own mistakes are listed already.
                None if declared(name) => {}
                None => mistakes.push(format!(
                    "queue {:?}: server {name:?} is not a profile (the file's `servers` has {})",
                    queue.name,
                    profiles
                        .by_name
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        if mistakes.is_empty() {
            Ok(profiles)
        } else {
            Err(mistakes)
        }
    }
}

/// `bin` if it is an executable file; a bare name is looked up in `path`, as the spawn does.
pub(crate) fn find_executable(bin: &std::path::Path, path: Option<&std::ffi::OsStr>) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.components().count() > 1 {
        return executable(bin).then(|| bin.to_path_buf());
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(bin))
        .find(|candidate| executable(candidate))
}

/// A profile as the file spells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileSpec {
    command: Option<Vec<String>>,
    image: Option<String>,
    ports: Vec<PortSpec>,
    ready: Option<serde_yaml::Value>,
    identity: Option<String>,
    ends: Option<String>,
    max_session_seconds: Option<f64>,
    empty_grace_seconds: Option<f64>,
    stop_grace_seconds: Option<f64>,
    health_timeout_seconds: Option<f64>,
    warm_pool: Option<WarmPoolSpec>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    versions: Vec<VersionSpec>,
}

/// A version as the file spells it: the profile with its own command or image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionSpec {
    name: String,
    command: Option<Vec<String>>,
    image: Option<String>,
    weight: u32,
}

/// The built-in server's entry in `servers`: only its versions, each with the program
/// (`command`, the local runtime) or image (Pods) of its build.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuiltinSpec {
    versions: Vec<VersionSpec>,
}

impl BuiltinSpec {
    /// The built-in profile with these versions, if they are right for `target`.
    fn check(&self, target: Target<'_>, mistake: &mut dyn FnMut(String)) -> Option<Profile> {
        let before = std::cell::Cell::new(0usize);
        let mut count = |m: String| {
            before.set(before.get() + 1);
            mistake(m);
        };
        check_version_list(&self.versions, &mut count);
        if self.versions.is_empty() {
            count("versions: list at least one version".into());
        }
        let mut versions = Vec::new();
        for v in &self.versions {
            let mut profile = Profile::builtin();
            profile.version = Some(v.name.clone());
            if let Some(command) = &v.command {
                match (command.first(), target) {
                    (None, _) => count(format!("version {:?}: command must not be empty", v.name)),
                    (Some(bin), Target::Local { path })
                        if find_executable(std::path::Path::new(bin), path).is_none() =>
                    {
                        count(format!(
                            "version {:?}: command[0] {bin:?} is not an executable file",
                            v.name
                        ));
                    }
                    _ => {}
                }
                profile.command.clone_from(command);
            }
            profile.image.clone_from(&v.image);
            versions.push(Version {
                name: v.name.clone(),
                weight: v.weight,
                profile: Arc::new(profile),
            });
        }
        if before.get() > 0 {
            return None;
        }
        let mut builtin = Profile::builtin();
        builtin.versions = versions;
        Some(builtin)
    }
}

/// The checks every list of versions gets: names, uniqueness, weights.
fn check_version_list(versions: &[VersionSpec], mistake: &mut dyn FnMut(String)) {
    if versions.len() > MAX_VERSIONS {
        mistake(format!("versions: at most {MAX_VERSIONS}, got {}", versions.len()));
    }
    let mut names = BTreeSet::new();
    for (i, v) in versions.iter().enumerate() {
        if !is_label_value(&v.name) {
            mistake(format!(
                "versions[{i}]: name {:?} must be at most 63 characters of A-Z a-z 0-9 _ . -, starting and ending with a letter or digit",
                v.name
            ));
        }
        if !names.insert(v.name.as_str()) {
            mistake(format!("versions[{i}]: {:?} is named twice", v.name));
        }
        if v.weight > MAX_WEIGHT {
            mistake(format!(
                "versions[{i}] {:?}: weight must be 0 to {MAX_WEIGHT}, got {}",
                v.name, v.weight
            ));
        }
    }
    if !versions.is_empty() && versions.iter().all(|v| v.weight == 0) {
        mistake("versions: at least one version needs a weight above 0".into());
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmPoolSpec {
    #[serde(default)]
    min: usize,
    max: usize,
}

/// The most warm servers one profile may keep.
const MAX_WARM_POOL: usize = 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSpec {
    name: String,
    protocol: String,
    container_port: Option<u16>,
}

/// The variables `${VAR}` may name in `command` and `env`, given the profile's ports: each
/// `MATCHPLANE_*` name, and the same without the prefix.
fn known_variables(ports: &[Port]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = CONTRACT.iter().map(|v| (*v).to_owned()).collect();
    names.insert(HOST.to_owned());
    names.extend(ports.iter().map(Port::variable));
    let short: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("MATCHPLANE_").map(str::to_owned))
        .collect();
    names.extend(short);
    names
}

/// The address a server binds: 127.0.0.1 locally, the Pod's IP in Kubernetes.
pub const HOST: &str = "MATCHPLANE_HOST";

/// The session's variables every server gets (ports and [`HOST`] come on top).
pub const CONTRACT: [&str; 7] = [
    "MATCHPLANE_SESSION_ID",
    "MATCHPLANE_PLAYERS",
    "MATCHPLANE_TEAMS",
    "MATCHPLANE_QUEUE",
    "MATCHPLANE_REPORT_URL",
    "MATCHPLANE_REPORT_TOKEN",
    "MATCHPLANE_VERSION",
];

/// The names `${...}` refers to in `text`, or what is wrong with it.
fn references(text: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("{text:?} has a `${{` without its `}}`"));
        };
        found.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(found)
}

/// `text` with every `${NAME}` replaced by `value(NAME)` (names were checked at load).
pub fn substitute(text: &str, value: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                let full = if name.starts_with("MATCHPLANE_") {
                    name.to_owned()
                } else {
                    format!("MATCHPLANE_{name}")
                };
                out.push_str(&value(&full).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[at..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `text` is a Kubernetes label value: at most 63 characters of `[A-Za-z0-9_.-]`,
/// starting and ending with a letter or digit.
fn is_label_value(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A seconds setting within `(0, max]` (or `[0, max]` when `zero` is allowed).
fn duration(what: &str, value: f64, zero: bool, max: f64, mistake: &mut dyn FnMut(String)) -> Duration {
    let low_ok = if zero { value >= 0.0 } else { value > 0.0 };
    if !(value.is_finite() && low_ok && value <= max) {
        let low = if zero { ">= 0" } else { "> 0" };
        mistake(format!("{what} must be {low} and at most {max}, got {value}"));
        return Duration::ZERO;
    }
    Duration::from_secs_f64(value)
}

impl ProfileSpec {
    /// The profile, or with `versions` the profile as each version runs it: every version is
    /// the profile with its own command or image, checked as a profile is. A mistake every
    /// version shares is said once; one of a version's own names the version.
    fn check(&self, name: &str, target: Target<'_>, mistake: &mut dyn FnMut(String)) -> Profile {
        if self.versions.is_empty() {
            return self.check_one(name, target, mistake);
        }
        check_version_list(&self.versions, mistake);
        let mut said: Vec<Vec<String>> = Vec::new();
        let mut versions = Vec::new();
        for v in &self.versions {
            let mut spec = self.clone();
            spec.versions = Vec::new();
            if v.command.is_some() {
                spec.command.clone_from(&v.command);
            }
            if v.image.is_some() {
                spec.image.clone_from(&v.image);
            }
            let mut own = Vec::new();
            let mut profile = spec.check_one(name, target, &mut |m: String| own.push(m));
            profile.version = Some(v.name.clone());
            said.push(own);
            versions.push(Version {
                name: v.name.clone(),
                weight: v.weight,
                profile: Arc::new(profile),
            });
        }
        let shared: Vec<String> = said[0]
            .iter()
            .filter(|m| said.iter().all(|own| own.contains(m)))
            .cloned()
            .collect();
        for m in &shared {
            mistake(m.clone());
        }
        for (v, own) in self.versions.iter().zip(&said) {
            for m in own.iter().filter(|m| !shared.contains(m)) {
                mistake(format!("version {:?}: {m}", v.name));
            }
        }
        let mut base = Profile::clone(&versions[0].profile);
        base.version = None;
        base.versions = versions;
        base
    }

    fn check_one(&self, name: &str, target: Target<'_>, mistake: &mut dyn FnMut(String)) -> Profile {
        // Ports first: the variables `command` and `env` may use depend on them.
        if self.ports.is_empty() || self.ports.len() > MAX_PORTS {
            mistake(format!(
                "ports must list 1 to {MAX_PORTS} ports, got {}",
                self.ports.len()
            ));
        }
        let mut ports = Vec::new();
        let mut variables = BTreeSet::new();
        let mut container_ports = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            if !is_valid_name(&port.name) {
                mistake(format!(
                    "ports[{i}]: name {:?} must be 1-64 characters of A-Z a-z 0-9 _ -",
                    port.name
                ));
            }
            let protocol = match port.protocol.as_str() {
                "tcp" => PortProtocol::Tcp,
                "udp" => PortProtocol::Udp,
                other => {
                    mistake(format!("ports[{i}]: protocol must be tcp or udp, got {other:?}"));
                    PortProtocol::Tcp
                }
            };
            let container_port = port
                .container_port
                .unwrap_or(protocol::server::DEFAULT_PORT.saturating_add(i as u16));
            if container_port == 0 {
                mistake(format!("ports[{i}]: container_port must be 1 to 65535"));
            }
            let port = Port {
                name: port.name.clone(),
                protocol,
                container_port,
            };
            if !variables.insert(port.variable()) {
                mistake(format!(
                    "ports[{i}]: the port name {:?} is used twice (names are compared as {})",
                    port.name,
                    port.variable()
                ));
            }
            if !container_ports.insert((container_port, protocol)) {
                mistake(format!(
                    "ports[{i}]: container_port {container_port}/{} is used twice",
                    protocol.as_str()
                ));
            }
            ports.push(port);
        }
        let known = known_variables(&ports);
        let check_text = |what: &str, text: &str, mistake: &mut dyn FnMut(String)| match references(text) {
            Ok(names) => {
                for unknown in names.into_iter().filter(|n| !known.contains(*n)) {
                    mistake(format!(
                        "{what}: ${{{unknown}}} is not a variable matchplane sets (MATCHPLANE_SESSION_ID, MATCHPLANE_PLAYERS, MATCHPLANE_TEAMS, MATCHPLANE_QUEUE, MATCHPLANE_REPORT_URL, MATCHPLANE_REPORT_TOKEN, MATCHPLANE_VERSION, MATCHPLANE_PORT_<NAME>, or the same without MATCHPLANE_)"
                    ));
                }
            }
            Err(e) => mistake(format!("{what}: {e}")),
        };
        let command = self.command.clone().unwrap_or_default();
        if self.command.as_ref().is_some_and(Vec::is_empty) {
            mistake("command must name a program".into());
        }
        for (i, arg) in command.iter().enumerate() {
            check_text(&format!("command[{i}]"), arg, mistake);
        }
        for (key, value) in &self.env {
            let valid = key.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                mistake(format!("env: {key:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"));
            }
            if key.starts_with("MATCHPLANE_") {
                mistake(format!("env: {key} is matchplane's to set"));
            }
            check_text(&format!("env.{key}"), value, mistake);
        }
        let ready = match &self.ready {
            None => Ready::Port,
            Some(serde_yaml::Value::String(s)) if s == "port" => Ready::Port,
            Some(serde_yaml::Value::String(s)) if s == "sdk" => Ready::Sdk,
            Some(serde_yaml::Value::Mapping(m)) if m.len() == 1 && m.get("log").is_some() => {
                match m.get("log").and_then(serde_yaml::Value::as_str) {
                    Some(pattern) => match regex::Regex::new(pattern) {
                        Ok(re) => Ready::Log(re),
                        Err(e) => {
                            let why = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
                            mistake(format!("ready.log: {pattern:?} is not a regular expression ({why})"));
                            Ready::Port
                        }
                    },
                    None => {
                        mistake("ready.log must be a regular expression (a string)".into());
                        Ready::Port
                    }
                }
            }
            Some(_) => {
                mistake("ready must be `port`, `sdk`, or `{log: <regular expression>}`".into());
                Ready::Port
            }
        };
        let identity = match self.identity.as_deref().map(str::parse::<Identity>) {
            None => Identity::None,
            Some(Ok(identity)) => identity,
            Some(Err(e)) => {
                mistake(format!("identity: {e}"));
                Identity::None
            }
        };
        if identity == Identity::ProxyV2 && !ports.iter().any(|p| p.protocol == PortProtocol::Tcp) {
            mistake(
                "identity proxy-v2 starts each TCP connection with a header, but the profile has no tcp port".into(),
            );
        }
        let ends = match self.ends.as_deref() {
            None | Some("exit") => Ends::Exit,
            Some("sdk") => Ends::Sdk,
            Some(other) => {
                mistake(format!("ends must be exit or sdk, got {other:?}"));
                Ends::Exit
            }
        };
        let max_session = self
            .max_session_seconds
            .map(|s| duration("max_session_seconds", s, false, MAX_CAP_SECONDS, mistake));
        let empty_grace = self
            .empty_grace_seconds
            .map(|s| duration("empty_grace_seconds", s, false, 86_400.0, mistake));
        let stop_grace = self.stop_grace_seconds.map_or(DEFAULT_STOP_GRACE, |s| {
            duration("stop_grace_seconds", s, true, 3_600.0, mistake)
        });
        if let Some(image) = &self.image
            && (image.is_empty() || image.len() > 512 || image.contains(char::is_whitespace))
        {
            mistake(format!("image {image:?} is not an image reference"));
        }
        match target {
            Target::Local { path } => match command.first() {
                None => mistake("needs `command` to run with RUNTIME=local".into()),
                Some(program) if program.contains("${") => {
                    mistake(format!(
                        "command[0] {program:?}: the program itself cannot come from a variable"
                    ));
                }
                Some(program) => {
                    if find_executable(std::path::Path::new(program), path).is_none() {
                        mistake(format!(
                            "command[0] {program:?} is not an executable file{}",
                            if program.contains('/') { "" } else { " in PATH" }
                        ));
                    }
                }
            },
            Target::Kubernetes => {
                if self.image.is_none() {
                    mistake("needs `image` to run with RUNTIME=kubernetes".into());
                }
                match &ready {
                    Ready::Log(_) => mistake(
                        "ready: {log: ...} needs RUNTIME=local (its output is read there); in a Pod use `port` with a tcp port".into(),
                    ),
                    Ready::Port if !ports.iter().any(|p| p.protocol == PortProtocol::Tcp) => mistake(
                        "ready: port cannot see a UDP port bound inside a Pod (the kubelet probes TCP only); give the profile a tcp port to probe, or use `ready: sdk`".into(),
                    ),
                    _ => {}
                }
            }
            Target::None => {}
        }
        let health_timeout = self
            .health_timeout_seconds
            .map(|s| duration("health_timeout_seconds", s, false, 3_600.0, mistake));
        let warm = self.warm_pool.as_ref().map(|pool| {
            if pool.max == 0 || pool.min > pool.max || pool.max > MAX_WARM_POOL {
                mistake(format!(
                    "warm_pool: min {} and max {} must be 0 <= min <= max, 1 <= max <= {MAX_WARM_POOL}",
                    pool.min, pool.max
                ));
            }
            if !matches!(ready, Ready::Sdk) {
                mistake("warm_pool needs `ready: sdk`: a warm server takes its session through the SDK, and says it is ready for it".into());
            }
            let texts = command
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("command[{i}]"), a.as_str()))
                .chain(self.env.iter().map(|(k, v)| (format!("env.{k}"), v.as_str())));
            for (what, text) in texts {
                for name in references(text).unwrap_or_default() {
                    let full = if name.starts_with("MATCHPLANE_") { name.to_owned() } else { format!("MATCHPLANE_{name}") };
                    if CONTRACT.contains(&full.as_str()) {
                        mistake(format!(
                            "warm_pool: {what} uses ${{{name}}}, which a warm server does not have when it starts (it learns its session through the SDK)"
                        ));
                    }
                }
            }
            Bounds { min: pool.min, max: pool.max }
        });
        if matches!(target, Target::Kubernetes) && !is_label_value(name) {
            mistake("with RUNTIME=kubernetes the name labels its Pods: at most 63 characters, starting and ending with a letter or digit".into());
        }
        Profile {
            name: name.to_owned(),
            builtin: false,
            command,
            image: self.image.clone(),
            ports,
            ready,
            identity,
            ends,
            max_session,
            empty_grace,
            stop_grace,
            health_timeout,
            warm,
            env: self.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            version: None,
            versions: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
servers:
  arena:
    command: ["/bin/sh", "-c", "exec sleep 100", "--port", "${PORT_GAME}", "${MATCHPLANE_PORT_QUERY}"]
    ports: [{name: game, protocol: udp}, {name: query, protocol: tcp}]
    ready: {log: "^ready on [0-9]+$"}
    identity: proxy-v2
    ends: exit
    max_session_seconds: 3600
    empty_grace_seconds: 30
    stop_grace_seconds: 5
    env: {MAP: dm1, SESSION: "s-${SESSION_ID}"}
queues:
  - {name: deathmatch, session_size: 8, server: arena}
  - {name: casual, session_size: 4}
"#;

    fn local() -> Target<'static> {
        Target::Local {
            path: Some(OsStr::new("/usr/bin:/bin")),
        }
    }

    fn load(text: &str, target: Target<'_>) -> Result<Profiles, Vec<String>> {
        let queues = Queues::parse(text).expect("the queues are valid");
        Profiles::parse(text, Some(&queues), target)
    }

    #[test]
    fn a_profile_reads_with_every_field_and_queues_find_theirs() {
        let profiles = load(FILE, local()).unwrap();
        let arena = profiles.for_queue("deathmatch");
        assert_eq!(arena.name, "arena");
        assert!(!arena.builtin);
        assert_eq!(arena.ports.len(), 2);
        assert_eq!(arena.ports[0].variable(), "MATCHPLANE_PORT_GAME");
        assert_eq!(arena.first(PortProtocol::Tcp).unwrap().name, "query");
        assert_eq!(arena.first(PortProtocol::Udp).unwrap().container_port, 7777);
        assert!(matches!(&arena.ready, Ready::Log(re) if re.is_match("ready on 42")));
        assert_eq!(arena.identity, Identity::ProxyV2);
        assert_eq!(arena.ends, Ends::Exit);
        assert_eq!(arena.max_session, Some(Duration::from_secs(3600)));
        assert_eq!(arena.empty_grace, Some(Duration::from_secs(30)));
        assert_eq!(arena.stop_grace, Duration::from_secs(5));
        assert!(!arena.can_be_warm());
        let casual = profiles.for_queue("casual");
        assert!(casual.builtin && casual.can_be_warm() && casual.identity == Identity::JoinLine);
        assert!(profiles.for_queue("no-such-queue").builtin);
        assert_eq!(profiles.iter().count(), 2);
    }

    const VERSIONS: &str = r#"
servers:
  canary:
    command: ["/bin/sleep", "100"]
    image: registry.example/game:1.0
    ports: [{name: game, protocol: tcp}]
    versions:
      - {name: "1.0", weight: 90}
      - {name: "1.1", command: ["/bin/sh", "-c", "sleep 100"], image: "registry.example/game:1.1", weight: 10}
queues:
  - {name: duel, session_size: 2, server: canary}
"#;

    #[test]
    fn a_profiles_versions_are_whole_profiles_chosen_by_weight() {
        for target in [local(), Target::Kubernetes] {
            let profiles = load(VERSIONS, target).unwrap();
            let canary = profiles.for_queue("duel");
            assert_eq!(canary.versions.len(), 2);
            assert_eq!(canary.version, None);
            let (old, new) = (&canary.versions[0].profile, &canary.versions[1].profile);
            assert_eq!(
                (old.version.as_deref(), new.version.as_deref()),
                (Some("1.0"), Some("1.1"))
            );
            // A version without its own command or image runs the profile's.
            assert_eq!(old.command, ["/bin/sleep", "100"]);
            assert_eq!(new.command, ["/bin/sh", "-c", "sleep 100"]);
            assert_eq!(old.image.as_deref(), Some("registry.example/game:1.0"));
            assert_eq!(new.image.as_deref(), Some("registry.example/game:1.1"));
            assert_eq!(new.ports, canary.ports);
            let picks: Vec<String> = (0..100)
                .map(|_| profiles.pick("duel").version.clone().unwrap())
                .collect();
            assert_eq!(picks.iter().filter(|v| *v == "1.1").count(), 10);
            assert!(profiles.pick("no-such-queue").builtin);
        }
    }

    #[test]
    fn every_prefix_of_the_choices_is_within_one_of_the_weights() {
        for weights in [
            vec![1, 3],
            vec![10, 0],
            vec![2, 3, 5],
            vec![97, 2, 1],
            vec![1, 1, 1, 1, 1, 7],
        ] {
            let picker = Picker::new(&weights);
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; weights.len()];
            for n in 1..=5_000u32 {
                counts[picker.pick()] += 1;
                for (count, weight) in counts.iter().zip(&weights) {
                    let ideal = f64::from(n) * f64::from(*weight) / f64::from(total);
                    assert!(
                        (f64::from(*count) - ideal).abs() < 1.0,
                        "{weights:?} after {n}: {counts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn versions_are_checked_one_line_per_mistake() {
        let mistakes = |versions: &str, extra: &str| {
            let text = format!(
                "servers:\n  canary:\n    command: [/bin/sleep]\n    ports: [{{name: game, protocol: tcp}}]\n{extra}    versions: {versions}\nqueues:\n  - {{name: q, session_size: 2, server: canary}}\n"
            );
            load(&text, local()).unwrap_err()
        };
        let got = mistakes("[{name: a, weight: 0}, {name: b, weight: 0}]", "");
        assert_eq!(
            got,
            [r#"server "canary": versions: at least one version needs a weight above 0"#]
        );
        let got = mistakes("[{name: a, weight: 1}, {name: a, weight: 1}]", "");
        assert_eq!(got, [r#"server "canary": versions[1]: "a" is named twice"#]);
        let got = mistakes("[{name: -a, weight: 1}]", "");
        assert!(got[0].contains(r#"versions[0]: name "-a" must be"#), "{got:?}");
        let got = mistakes("[{name: a, weight: 1001}]", "");
        assert!(got[0].contains("weight must be 0 to 1000"), "{got:?}");
        let got = mistakes(
            "[{name: a, weight: 1, command: [/no/such/program]}, {name: b, weight: 1}]",
            "",
        );
        assert_eq!(
            got,
            [r#"server "canary": version "a": command[0] "/no/such/program" is not an executable file"#]
        );
        let got = mistakes("[{name: a, weight: 1, colour: red}]", "");
        assert!(got[0].contains("unknown field `colour`"), "{got:?}");
        // The built-in server takes only versions, each with its own build.
        let builtin = |versions: &str| {
            format!("servers:\n  game-server:\n    {versions}\nqueues:\n  - {{name: q, session_size: 2}}\n")
        };
        let got = load(&builtin("command: [/bin/sleep]"), local()).unwrap_err();
        assert!(got[0].contains("it takes only `versions`"), "{got:?}");
        let got = load(
            &builtin("versions: [{name: a, weight: 1, command: [/no/such/build]}]"),
            local(),
        )
        .unwrap_err();
        assert_eq!(
            got,
            [r#"server "game-server": version "a": command[0] "/no/such/build" is not an executable file"#]
        );
        let ok = load(
            &builtin("versions: [{name: a, weight: 1}, {name: b, weight: 2, command: [/bin/sleep]}]"),
            local(),
        )
        .unwrap();
        let game_server = ok.for_queue("q");
        assert!(game_server.builtin && game_server.versions.len() == 2);
        assert_eq!(game_server.versions[1].profile.command, ["/bin/sleep"]);
        assert!(game_server.versions.iter().all(|v| v.profile.builtin));
        // Warm servers per version, on both runtimes: every version has the profile's pool.
        let warm = "servers:\n  canary:\n    command: [/bin/sleep]\n    image: \"g:1\"\n    ready: sdk\n    ports: [{name: game, protocol: tcp}]\n    warm_pool: {min: 1, max: 2}\n    versions: [{name: a, weight: 1}, {name: b, weight: 1, image: \"g:2\"}]\nqueues:\n  - {name: q, session_size: 2, server: canary}\n";
        for target in [local(), Target::Kubernetes] {
            let profiles = load(warm, target).unwrap();
            let canary = profiles.get("canary").unwrap();
            assert!(canary.versions.iter().all(|v| v.profile.warm.is_some()));
        }
        // A mistake every version shares is said once, without a version's name.
        let text = "servers:\n  canary:\n    ports: [{name: game, protocol: tcp}]\n    versions: [{name: a, weight: 1}, {name: b, weight: 1}]\nqueues:\n  - {name: q, session_size: 2, server: canary}\n";
        assert_eq!(
            load(text, local()).unwrap_err(),
            [r#"server "canary": needs `command` to run with RUNTIME=local"#]
        );
        // With Pods, each version needs an image, its own or the profile's.
        let text = "servers:\n  canary:\n    ports: [{name: game, protocol: tcp}]\n    versions: [{name: a, weight: 1, image: \"g:1\"}, {name: b, weight: 1}]\nqueues:\n  - {name: q, session_size: 2, server: canary}\n";
        assert_eq!(
            load(text, Target::Kubernetes).unwrap_err(),
            [r#"server "canary": version "b": needs `image` to run with RUNTIME=kubernetes"#]
        );
    }

    #[test]
    fn variables_are_replaced_with_or_without_their_prefix() {
        let value = |name: &str| match name {
            "MATCHPLANE_PORT_GAME" => Some("4000".to_owned()),
            "MATCHPLANE_SESSION_ID" => Some("s1".to_owned()),
            _ => None,
        };
        assert_eq!(substitute("--port=${PORT_GAME}", &value), "--port=4000");
        assert_eq!(substitute("${MATCHPLANE_SESSION_ID}-${SESSION_ID}", &value), "s1-s1");
        assert_eq!(substitute("plain $HOME {x}", &value), "plain $HOME {x}");
    }

    #[test]
    fn without_servers_every_queue_runs_the_built_in_server() {
        let text = "queues:\n  - {name: a, session_size: 2}\n";
        let profiles = load(text, local()).unwrap();
        assert!(profiles.for_queue("a").builtin);
        assert!(profiles.get(BUILTIN).is_some());
    }

    /// Every mistake is one line, and the file's good parts do not hide its bad ones.
    #[test]
    fn every_mistake_is_one_line() {
        let text = r#"
servers:
  game-server: {command: [/bin/true], ports: [{name: game, protocol: tcp}]}
  bad name: {command: [/bin/true], ports: [{name: game, protocol: tcp}]}
  twice: {command: [/bin/true], ports: [{name: game, protocol: tcp}, {name: GAME, protocol: udp}]}
  proto: {command: [/bin/true], ports: [{name: game, protocol: sctp}]}
  noport: {command: [/bin/true], ports: []}
  notexec: {command: [/etc/os-release], ports: [{name: g, protocol: tcp}]}
  missing: {command: [no-such-program-here], ports: [{name: g, protocol: tcp}]}
  nocommand: {ports: [{name: g, protocol: tcp}]}
  vars: {command: [/bin/true, "${PORT_OTHER}", "${oops"], ports: [{name: g, protocol: tcp}], env: {"1X": a, MATCHPLANE_X: b, Y: "${NOPE}"}}
  ready: {command: [/bin/true], ports: [{name: g, protocol: tcp}], ready: {log: "(unclosed"}}
  ready2: {command: [/bin/true], ports: [{name: g, protocol: tcp}], ready: sometimes}
  modes: {command: [/bin/true], ports: [{name: g, protocol: udp}], identity: proxy-v2, ends: crash}
  modes2: {command: [/bin/true], ports: [{name: g, protocol: tcp}], identity: hello}
  caps: {command: [/bin/true], ports: [{name: g, protocol: tcp}], max_session_seconds: 0, empty_grace_seconds: -1, stop_grace_seconds: 99999, health_timeout_seconds: 0}
  unknown: {command: [/bin/true], ports: [{name: g, protocol: tcp}], colour: blue}
  fromvar: {command: ["${PORT_G}"], ports: [{name: g, protocol: tcp}]}
  warm1: {command: [/bin/true, "${SESSION_ID}"], ports: [{name: g, protocol: tcp}], ready: sdk, warm_pool: {min: 3, max: 2}}
  warm2: {command: [/bin/true, "${PORT_G}"], ports: [{name: g, protocol: tcp}], warm_pool: {max: 2}}
queues:
  - {name: q1, session_size: 2, server: nowhere}
  - {name: q2, session_size: 2, server: proto}
"#;
        let mistakes = load(text, local()).unwrap_err();
        let expected = [
            "server \"game-server\": unknown field `command`, expected `versions` (game-server is the built-in game server's profile: it takes only `versions`",
            "server \"bad name\": the name must be 1-64 characters",
            "server \"twice\": ports[1]: the port name \"GAME\" is used twice",
            "server \"proto\": ports[0]: protocol must be tcp or udp, got \"sctp\"",
            "server \"noport\": ports must list 1 to 8 ports, got 0",
            "server \"notexec\": command[0] \"/etc/os-release\" is not an executable file",
            "server \"missing\": command[0] \"no-such-program-here\" is not an executable file in PATH",
            "server \"nocommand\": needs `command` to run with RUNTIME=local",
            "server \"vars\": command[1]: ${PORT_OTHER} is not a variable matchplane sets",
            "server \"vars\": command[2]: \"${oops\" has a `${` without its `}`",
            "server \"vars\": env: \"1X\" is not a variable name",
            "server \"vars\": env: MATCHPLANE_X is matchplane's to set",
            "server \"vars\": env.Y: ${NOPE} is not a variable matchplane sets",
            "server \"ready\": ready.log: \"(unclosed\" is not a regular expression",
            "server \"ready2\": ready must be `port`, `sdk`, or `{log: <regular expression>}`",
            "server \"modes\": identity proxy-v2 starts each TCP connection with a header, but the profile has no tcp port",
            "server \"modes\": ends must be exit or sdk, got \"crash\"",
            "server \"modes2\": identity: \"hello\" is not an identity mode",
            "server \"caps\": max_session_seconds must be > 0",
            "server \"caps\": empty_grace_seconds must be > 0",
            "server \"caps\": stop_grace_seconds must be >= 0 and at most 3600, got 99999",
            "server \"caps\": health_timeout_seconds must be > 0",
            "server \"unknown\": unknown field `colour`",
            "server \"fromvar\": command[0] \"${PORT_G}\": the program itself cannot come from a variable",
            "server \"warm1\": warm_pool: min 3 and max 2 must be 0 <= min <= max",
            "server \"warm1\": warm_pool: command[1] uses ${SESSION_ID}, which a warm server does not have",
            "server \"warm2\": warm_pool needs `ready: sdk`",
            "queue \"q1\": server \"nowhere\" is not a profile",
        ];
        for want in expected {
            assert!(
                mistakes.iter().any(|m| m.starts_with(want)),
                "no mistake starts with {want:?} in:\n{}",
                mistakes.join("\n")
            );
        }
        assert!(mistakes.iter().all(|m| !m.contains('\n')), "one line each");
        // q2's profile is wrong, which is said once, under the profile.
        assert!(!mistakes.iter().any(|m| m.starts_with("queue \"q2\"")), "{mistakes:?}");
        assert_eq!(mistakes.len(), expected.len(), "{}", mistakes.join("\n"));
    }

    #[test]
    fn the_kubernetes_runtime_needs_an_image_and_refuses_what_it_cannot_run_yet() {
        let long = format!(
            "servers:\n  a_{}: {{image: x, ports: [{{name: g, protocol: tcp}}]}}\nqueues:\n  - {{name: q, session_size: 2}}\n",
            "x".repeat(62)
        );
        let mistakes = load(&long, Target::Kubernetes).unwrap_err();
        assert!(mistakes[0].contains("the name labels its Pods"), "{mistakes:?}");
        assert!(load(&long, Target::None).is_ok());
        let text =
            "servers:\n  a: {ports: [{name: g, protocol: udp}]}\nqueues:\n  - {name: q, session_size: 2, server: a}\n";
        let mistakes = load(text, Target::Kubernetes).unwrap_err();
        assert!(mistakes.iter().any(|m| m.contains("needs `image`")), "{mistakes:?}");
        // RUNTIME=none starts nothing, so neither command nor image is needed.
        assert!(load(text, Target::None).is_ok());
        // A UDP-only server in a Pod: the kubelet cannot see it bound, but the SDK can say it.
        let udp = |ready: &str| {
            format!(
                "servers:\n  a: {{image: x, ready: {ready}, ports: [{{name: g, protocol: udp}}]}}\nqueues:\n  - {{name: q, session_size: 2, server: a}}\n"
            )
        };
        let mistakes = load(&udp("port"), Target::Kubernetes).unwrap_err();
        assert!(
            mistakes[0].contains("ready: port cannot see a UDP port"),
            "{mistakes:?}"
        );
        let profiles = load(&udp("sdk"), Target::Kubernetes).unwrap();
        assert!(matches!(profiles.for_queue("q").ready, Ready::Sdk));
        let warm = udp("sdk, warm_pool: {max: 2}");
        let profiles = load(&warm, Target::Kubernetes).unwrap();
        let profile = profiles.for_queue("q");
        assert!(profile.can_be_warm() && profile.warm == Some(Bounds { min: 0, max: 2 }));
    }
}
