//! Room patterns: the syntax a version-2 client joins many rooms with, the
//! API publishes to many rooms with, and a token grants rooms with.
//!
//! Pure code, used on every shard (joins, token checks) and by the API.
//! docs/PROTOCOL.md ("Room patterns") is the contract.
//!
//! ```text
//! a room name is segments separated by '/':   live://1000  = "live:" "" "1000"
//! pattern segment  *   exactly one segment, whatever it holds (also empty)
//! pattern segment  >   (last only) one or more segments: the rest of the name
//! live://*        matches live://1000, not live://1000/chat
//! chat/>          matches chat/eu, chat/eu/lobby, not chat
//! chat/*/lobby    matches chat/eu/lobby
//! ```
//!
//! Invariants: a name is a pattern iff a segment is exactly `*` or `>`; a
//! `>` anywhere but last makes the name invalid (refused, never treated as a
//! literal), so every name is exactly one of literal, pattern or invalid.

/// What a room name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A plain room.
    Literal,
    /// A pattern (has a `*` segment or ends in a `>` segment).
    Pattern,
    /// A `>` segment that is not the last one.
    Invalid,
}

/// Whether `name` is a room, a pattern, or neither.
pub fn kind(name: &str) -> Kind {
    let mut pattern = false;
    let mut segs = name.split('/').peekable();
    while let Some(s) = segs.next() {
        match s {
            "*" => pattern = true,
            ">" if segs.peek().is_none() => pattern = true,
            ">" => return Kind::Invalid,
            _ => {}
        }
    }
    if pattern {
        Kind::Pattern
    } else {
        Kind::Literal
    }
}

/// Whether room `room` matches `pattern` (a literal pattern matches only
/// itself).
pub fn matches(pattern: &str, room: &str) -> bool {
    let mut r = room.split('/');
    for p in pattern.split('/') {
        if p == ">" {
            return r.next().is_some();
        }
        match r.next() {
            Some(s) if p == "*" || p == s => {}
            _ => return false,
        }
    }
    r.next().is_none()
}

/// Whether every room that matches `inner` also matches `outer` (what a
/// token's grant must be to allow joining pattern `inner`; for a literal
/// `inner`, the same as `matches(outer, inner)`).
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut i = inner.split('/');
    for o in outer.split('/') {
        if o == ">" {
            return i.next().is_some();
        }
        match i.next() {
            // `>` in inner reaches rooms longer than any single segment of outer.
            Some(">") | None => return false,
            Some(s) if o == "*" || o == s => {}
            Some(_) => return false,
        }
    }
    i.next().is_none()
}

/// Whether any of `grants` covers `name` (a room or a pattern).
pub fn allowed<S: AsRef<str>>(grants: &[S], name: &str) -> bool {
    grants.iter().any(|g| covers(g.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_documented_examples() {
        assert_eq!(kind("live://1000"), Kind::Literal);
        assert_eq!(kind("live://*"), Kind::Pattern);
        assert_eq!(kind("chat/>"), Kind::Pattern);
        assert_eq!(kind("chat/>/x"), Kind::Invalid);
        assert_eq!(kind("a*/b>"), Kind::Literal);
        assert!(matches("live://*", "live://1000"));
        assert!(!matches("live://*", "live://1000/chat"));
        assert!(matches("live://*", "live://"));
        assert!(matches("chat/>", "chat/eu"));
        assert!(matches("chat/>", "chat/eu/lobby"));
        assert!(!matches("chat/>", "chat"));
        assert!(matches("chat/*/lobby", "chat/eu/lobby"));
        assert!(!matches("chat/*/lobby", "chat/eu/hall"));
        assert!(matches("live://1", "live://1"));
        assert!(!matches("live://1", "live://10"));
        assert!(matches(">", "anything"));

        assert!(covers("chat/>", "chat/*/lobby"));
        assert!(covers("chat/>", "chat/>"));
        assert!(covers("chat/*", "chat/*"));
        assert!(!covers("chat/*", "chat/>"));
        assert!(!covers("chat/eu", "chat/*"));
        assert!(covers("*/*", "chat/eu"));
        assert!(!covers("chat/*/lobby", "chat/>"));
        assert!(allowed(&["a/b", "live://*"], "live://9"));
        assert!(!allowed::<&str>(&[], "live://9"));
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(vec!["a", "b", "", "*", ">"]), 1..5)
            .prop_map(|v| v.join("/"))
    }

    fn literal() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(vec!["a", "b", ""]), 1..6).prop_map(|v| v.join("/"))
    }

    proptest! {
        /// `covers(o, i)` holds exactly when every room (over a small
        /// alphabet, long enough to tell) matching `i` matches `o`.
        #[test]
        fn covers_agrees_with_matching(o in name(), i in name()) {
            prop_assume!(kind(&o) != Kind::Invalid && kind(&i) != Kind::Invalid);
            // Every name of 1 to 6 segments over {a, b, c, ""}.
            let mut level: Vec<String> = ["a", "b", "c", ""].map(String::from).to_vec();
            let mut all = level.clone();
            for _ in 1..6 {
                level = level.iter().flat_map(|r| ["a", "b", "c", ""].map(|s| format!("{r}/{s}"))).collect();
                all.extend(level.iter().cloned());
            }
            let expect = all.iter().filter(|r| matches(&i, r)).all(|r| matches(&o, r));
            prop_assert_eq!(covers(&o, &i), expect, "outer {:?} inner {:?}", o, i);
        }

        #[test]
        fn a_literal_covers_and_matches_only_itself(a in literal(), b in literal()) {
            prop_assert_eq!(matches(&a, &b), a == b);
            prop_assert_eq!(covers(&a, &b), a == b);
        }
    }
}
