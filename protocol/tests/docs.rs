//! docs/PROTOCOL.md and this crate say the same things: its error-code table lists
//! exactly `ErrorCode::ALL` (in order), and its close-code table exactly `codes::close::ALL`.

use telehub_protocol::codes::close;
use telehub_protocol::ErrorCode;

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The body rows of the first table after the heading `heading`, split into cells.
fn table(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = doc
        .lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .skip_while(|l| !l.starts_with('|'));
    let mut rows = Vec::new();
    // Header and separator rows first.
    lines.next();
    lines.next();
    for line in lines.take_while(|l| l.starts_with('|')) {
        let cells = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect();
        rows.push(cells);
    }
    assert!(!rows.is_empty(), "no table under {heading:?}");
    rows
}

#[test]
fn the_error_code_table_lists_every_code_in_order() {
    let doc = protocol_md();
    let documented: Vec<String> = table(&doc, "## Error codes")
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    let crate_codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, crate_codes);
}

#[test]
fn the_close_code_table_lists_every_close_and_reason() {
    let doc = protocol_md();
    let documented: Vec<(u16, String)> = table(&doc, "## Close codes (RFC 6455)")
        .into_iter()
        .map(|row| {
            let code = row[0]
                .parse()
                .unwrap_or_else(|_| panic!("bad code in {row:?}"));
            (code, row[1].clone())
        })
        .collect();
    let crate_closes: Vec<(u16, String)> = close::ALL
        .iter()
        .map(|(code, reason)| (*code, reason.to_string()))
        .collect();
    assert_eq!(documented, crate_closes);
}
