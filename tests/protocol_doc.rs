//! docs/PROTOCOL.md is the contract for client authors: its operations
//! tables must be whole. Each version's table is one run of rows that names
//! every operation code the server sends or takes in that version and
//! holds its `any other` row; prose or a subsection inside a table would cut
//! it in two and strand the rows after the cut.

use volley::proto::binary::op as v1;
use volley::proto::v2::op as v2;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

/// The rows of the first table after `heading` (a line of the document),
/// and whatever table rows follow it before the next `## ` section.
fn table_after(heading: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    let start = DOC
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{heading} in PROTOCOL.md"));
    let rest = &DOC[start + heading.len() + 2..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    let mut lines = rest[..end].lines().skip_while(|l| !l.starts_with('|'));
    let table: Vec<_> = lines.by_ref().take_while(|l| l.starts_with('|')).collect();
    let stray = lines.filter(|l| l.starts_with("| any other")).collect();
    (table, stray)
}

/// The operation codes a table's rows name (`| 40 join | ...`).
fn codes(table: &[&str]) -> Vec<u32> {
    table
        .iter()
        .filter_map(|row| row.trim_start_matches('|').split_whitespace().next()?.parse().ok())
        .collect()
}

fn check(heading: &str, expected: &[u32]) {
    let (table, stray) = table_after(heading);
    assert!(stray.is_empty(), "{heading}: rows cut off from the table: {stray:?}");
    assert!(
        table.iter().any(|r| r.starts_with("| any other")),
        "{heading}: the table holds its `any other` row: {table:?}"
    );
    let listed = codes(&table);
    for code in expected {
        assert!(listed.contains(code), "{heading}: op {code} is not in the table");
    }
}

#[test]
fn version_1_operations_are_one_table() {
    check(
        "## Operations",
        &[
            v1::HEARTBEAT,
            v1::SEND_MSG,
            v1::DISCONNECT,
            v1::AUTH,
            v1::RAW,
            v1::CHANGE_ROOM,
            v1::SUB,
            v1::UNSUB,
        ],
    );
}

#[test]
fn version_2_operations_are_one_table() {
    check(
        "### Operations",
        &[
            v1::HEARTBEAT,
            v1::DISCONNECT,
            v1::AUTH,
            v1::RAW,
            v2::JOIN,
            v2::JOIN_REPLY,
            v2::LEAVE,
            v2::LEAVE_REPLY,
            v2::PUSH,
            v2::ACK,
            v2::READ,
            v2::ERROR,
            v2::PUBLISH,
            v2::TOKEN,
            v2::REFRESH,
            v2::PRESENCE,
        ],
    );
}

/// Replies can overtake one another (a join waits for its room's owner), so
/// the contract must tell clients to match them by sequence.
#[test]
fn the_frame_section_says_replies_match_by_sequence() {
    let frame = &DOC[DOC.find("\n## Frame\n").unwrap()..DOC.find("\n## Session\n").unwrap()];
    assert!(
        frame.contains("match a reply to its request by its\n  sequence"),
        "{frame}"
    );
    assert!(
        !frame.contains("pushes and the\n  op 6 goodbye carry version 1."),
        "{frame}"
    );
}
