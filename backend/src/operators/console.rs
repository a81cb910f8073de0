//! The console's sign-ins. Signing in with the operator token makes a random cookie (256
//! bits); Redis keeps, under the cookie's SHA-256, who signed in, the CSRF token their
//! state-changing requests carry, and a fingerprint of the operator token it was made with:
//! every replica knows the sign-in, signing out ends it everywhere, and a new operator token
//! ends every sign-in made with the old one. Neither the cookie nor the operator token is
//! kept anywhere in clear.

use std::time::Duration;

use identity::StaticToken;
use matchmaking_core::store::{Store, now_ms};
use protocol::operators::ConsoleSession;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::history::from_ms;

/// The cookie's name.
pub(crate) const COOKIE: &str = "mp_console";
/// How long a sign-in lasts.
pub(crate) const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// A sign-in as Redis keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SignIn {
    pub name: String,
    csrf: String,
    expires_ms: i64,
    /// The SHA-256 of the operator token it was made with.
    token: String,
}

impl SignIn {
    /// Whether `given` is this sign-in's CSRF token (in constant time).
    pub(crate) fn csrf_matches(&self, given: &str) -> bool {
        StaticToken::new(&self.csrf).matches(given)
    }

    pub(crate) fn session(&self) -> ConsoleSession {
        ConsoleSession {
            name: self.name.clone(),
            csrf_token: self.csrf.clone(),
            expires_at: from_ms(self.expires_ms),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn digest(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// 256 random bits as hex (two v4 UUIDs' random parts, from the OS's generator).
fn random_token() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    digest(&format!("{a}{b}"))
}

/// Whether `cookie` has a cookie's shape: 64 lowercase hex digits.
fn well_formed(cookie: &str) -> bool {
    cookie.len() == 64 && cookie.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A name the audit log can show: 1-64 of `A-Z a-z 0-9 _ . @ -`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Signs `name` in (the operator token already checked): the cookie, and the sign-in.
pub(crate) async fn sign_in(
    store: &Store,
    name: &str,
    operator_token: &str,
) -> matchmaking_core::store::Result<(String, SignIn)> {
    let cookie = random_token();
    let sign_in = SignIn {
        name: name.to_owned(),
        csrf: random_token(),
        expires_ms: now_ms() + i64::try_from(LIFETIME.as_millis()).unwrap_or(i64::MAX),
        token: digest(operator_token),
    };
    // Strings and numbers: encoding cannot fail.
    let json = serde_json::to_string(&sign_in).expect("a sign-in encodes");
    store.put_console_session(&digest(&cookie), &json, LIFETIME).await?;
    Ok((cookie, sign_in))
}

/// The sign-in `cookie` stands for, while it lasts and the operator token is the one it was
/// made with.
pub(crate) async fn signed_in(
    store: &Store,
    cookie: &str,
    operator_token: &str,
) -> matchmaking_core::store::Result<Option<SignIn>> {
    if !well_formed(cookie) {
        return Ok(None);
    }
    let Some(raw) = store.console_session(&digest(cookie)).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_str::<SignIn>(&raw)
        .ok()
        .filter(|s| s.expires_ms > now_ms() && StaticToken::new(&s.token).matches(&digest(operator_token))))
}

/// Ends the sign-in `cookie` stands for.
pub(crate) async fn sign_out(store: &Store, cookie: &str) -> matchmaking_core::store::Result<()> {
    if well_formed(cookie) {
        store.drop_console_session(&digest(cookie)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_random_and_checked_for_shape() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(well_formed(&a));
        assert!(!well_formed(&a[1..]));
        assert!(!well_formed(&a.to_uppercase()));
        assert!(!well_formed(&format!("{}g", &a[1..])));
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(valid_name("ana.ops@studio"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name("<script>"));
        assert!(!valid_name("a b"));
    }
}
