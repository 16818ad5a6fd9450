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
//! Bounds (a pattern only; a room may be as deep as its 256 bytes allow): at
//! most `MAX_SEGMENTS` segments and `MAX_WILDCARDS` `*` segments. They bound
//! what matching one room costs a shard whatever its subscribers hold: the
//! index visits, per room message, only trie nodes on paths that match a
//! prefix of the room, one per choice of literal-or-`*` at each depth, so at
//! most `MAX_VISITS` (sum over depths d <= 16 of C(d, 0..=3)) however many
//! patterns there are, and a pattern costs at most 16 nodes.
//!
//! Invariants: a name is a pattern iff a segment is exactly `*` or `>`; a
//! `>` anywhere but last, or a pattern past its bounds, makes the name
//! invalid (refused, never treated as a literal), so every name is exactly
//! one of literal, pattern or invalid.

/// Most segments in a pattern.
pub const MAX_SEGMENTS: usize = 16;

/// Most `*` segments in a pattern (a trailing `>` is not counted: it ends
/// the walk instead of branching it).
pub const MAX_WILDCARDS: usize = 3;

/// Most trie nodes matching one room visits in a shard's index, with
/// patterns within the bounds: Σ_{d=0..=16} Σ_{j=0..=min(d,3)} C(d, j).
pub const MAX_VISITS: usize = 3_213;

/// Why a name is neither a room nor a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `>` segment that is not the last.
    #[error("`>` may only be a room pattern's last segment")]
    TailNotLast,
    /// A pattern of more than `MAX_SEGMENTS` segments.
    #[error("a pattern has at most {MAX_SEGMENTS} segments, this one {0}")]
    TooDeep(usize),
    /// A pattern with more than `MAX_WILDCARDS` `*` segments.
    #[error("a pattern has at most {MAX_WILDCARDS} `*` segments, this one {0}")]
    TooManyWildcards(usize),
}

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
    check(name).unwrap_or(Kind::Invalid)
}

/// Whether `name` is a room or a pattern within its bounds, and if it is
/// neither, why.
pub fn check(name: &str) -> Result<Kind, PatternError> {
    let (mut segments, mut stars, mut tail) = (0, 0, false);
    let mut segs = name.split('/').peekable();
    while let Some(s) = segs.next() {
        segments += 1;
        match s {
            "*" => stars += 1,
            ">" if segs.peek().is_none() => tail = true,
            ">" => return Err(PatternError::TailNotLast),
            _ => {}
        }
    }
    if stars == 0 && !tail {
        return Ok(Kind::Literal);
    }
    if segments > MAX_SEGMENTS {
        return Err(PatternError::TooDeep(segments));
    }
    if stars > MAX_WILDCARDS {
        return Err(PatternError::TooManyWildcards(stars));
    }
    Ok(Kind::Pattern)
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
        let deep = vec!["x"; 17].join("/");
        assert_eq!(kind(&deep), Kind::Literal, "a room may be deep");
        assert_eq!(check(&format!("{deep}/*")), Err(PatternError::TooDeep(18)));
        assert_eq!(check(&format!("{}/*", vec!["x"; 15].join("/"))), Ok(Kind::Pattern));
        assert_eq!(check("*/*/*/>"), Ok(Kind::Pattern));
        assert_eq!(check("*/*/*/*"), Err(PatternError::TooManyWildcards(4)));
        assert_eq!(check("a/>/b"), Err(PatternError::TailNotLast));
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

    /// Σ over depths 0..=16 of the ways to put at most 3 wildcards there.
    #[test]
    fn the_visit_bound_is_what_the_bounds_allow() {
        let choose = |n: usize, k: usize| (0..k).fold(1usize, |acc, i| acc * (n - i) / (i + 1));
        let total: usize = (0..=MAX_SEGMENTS)
            .map(|d| (0..=MAX_WILDCARDS.min(d)).map(|j| choose(d, j)).sum::<usize>())
            .sum();
        assert_eq!(total, MAX_VISITS);
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
