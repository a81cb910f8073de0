//! The two lines of a warm server's hand-over, on its game port: the backend sends
//! `ASSIGN <token>` (a [`crate::Handover`] signed for this one server), the server answers
//! `ASSIGNED <session_id>` and serves that session from then on, or `ERROR <code>`.

/// `ASSIGN <token>`, with its newline.
pub fn assign(token: &str) -> String {
    format!("ASSIGN {token}\n")
}

/// The token of an `ASSIGN <token>` line (without its newline), if that is what it is.
pub fn parse_assign(line: &str) -> Option<&str> {
    one_word_after(line, "ASSIGN")
}

/// `ASSIGNED <session_id>`, with its newline.
pub fn assigned(session_id: &str) -> String {
    format!("ASSIGNED {session_id}\n")
}

/// The session id of an `ASSIGNED <session_id>` line, if that is what it is.
pub fn parse_assigned(line: &str) -> Option<&str> {
    one_word_after(line, "ASSIGNED")
}

fn one_word_after<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    let (first, rest) = line.trim().split_once(' ')?;
    let rest = rest.trim();
    (first == word && !rest.is_empty() && !rest.contains(char::is_whitespace)).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_nothing_else_parses() {
        assert_eq!(parse_assign(assign("a.b.c").trim_end()), Some("a.b.c"));
        assert_eq!(parse_assigned(&assigned("s-1")), Some("s-1"));
        for bad in [
            "ASSIGN",
            "ASSIGN ",
            "ASSIGN a b",
            "assign a",
            "JOIN a",
            "ASSIGNED a",
            "",
        ] {
            assert_eq!(parse_assign(bad), None, "{bad:?}");
        }
        assert_eq!(parse_assigned("ASSIGN s"), None);
    }
}
