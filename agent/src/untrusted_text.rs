//! Text from the network (peers' hellos, servers' answers) made safe to show and to log.
//!
//! A peer or a server can put any character in a string: NUL, ESC (terminal escape
//! sequences in a log viewer), newlines (a forged log line), bidirectional overrides (text
//! that displays in another order than it reads). Such strings reach the status page,
//! `/v1/peers`, `/v1/targets` and the log, so each is passed through [`printable`] where it
//! enters the agent.

use std::borrow::Cow;

/// What an unprintable character becomes: visible, and plainly not the original.
pub const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;

/// `text` with every control character (C0, DEL, C1, so also tab and newline) and every
/// bidirectional formatting character replaced by [`REPLACEMENT`]; borrowed when there is
/// none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if unprintable(c) { REPLACEMENT } else { c })
            .collect(),
    )
}

/// [`printable`] in place.
pub fn make_printable(text: &mut String) {
    if let Cow::Owned(clean) = printable(text) {
        *text = clean;
    }
}

fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_replaced() {
        assert_eq!(printable("gpu-node-1 é ✓"), "gpu-node-1 é ✓");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(printable("a\0b\x1b[31mc"), "a\u{FFFD}b\u{FFFD}[31mc");
        assert_eq!(
            printable("line\nforged\r\t"),
            "line\u{FFFD}forged\u{FFFD}\u{FFFD}"
        );
        assert_eq!(printable("\u{7f}\u{85}\u{9b}"), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(printable("abc\u{202E}fed"), "abc\u{FFFD}fed");
        let mut s = String::from("x\u{2066}y");
        make_printable(&mut s);
        assert_eq!(s, "x\u{FFFD}y");
    }
}
