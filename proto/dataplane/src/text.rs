//! Text that crosses a trust boundary: bounded and free of control
//! characters before anyone logs or stores it.

/// `text` fit for a column operators read and logs: every control
/// character (NUL, newlines, terminal escapes) becomes a space, and it is
/// cut to at most `max` bytes at a character boundary, the cut marked
/// with `…`. Text a peer writes (an agent's nack, its version) passes
/// through here on both sides: the agent bounds what it sends, the
/// control plane what it logs and stores (PostgreSQL refuses NUL in text,
/// which would fail a whole batch of reports).
pub fn clean_text(text: &str, max: usize) -> String {
    const MARK: char = '…';
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            while out.len() + MARK.len_utf8() > max {
                if out.pop().is_none() {
                    return out;
                }
            }
            out.push(MARK);
            return out;
        }
        out.push(c);
    }
    out
}

/// `text` as a problem or rejection quotes it: escaped as a Rust string
/// literal (a newline stays `\n`, never a second line of a report) and cut
/// to [`QUOTED_BYTES`] at a character boundary, the cut marked with `…`,
/// so a problem is one short line whatever an object or a state holds.
pub fn quoted(text: &str) -> String {
    let cut = &text[..text.floor_char_boundary(QUOTED_BYTES)];
    let ellipsis = if cut.len() < text.len() { "…" } else { "" };
    format!("{cut:?}{ellipsis}")
}

/// How much of a text [`quoted`] shows.
pub const QUOTED_BYTES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clean_text_replaces_control_characters_and_cuts_at_a_character() {
        let cases: &[(&str, usize, &str)] = &[
            ("ipset restore failed", 64, "ipset restore failed"),
            ("a\0b\nc\td\u{1b}[31m", 64, "a b c d [31m"),
            ("\u{85}next line", 64, " next line"),
            ("abcdefgh", 8, "abcdefgh"),
            ("abcdefghi", 8, "abcde…"),
            ("ééééé", 7, "éé…"),
            ("abc", 2, ""),
            ("", 0, ""),
        ];
        for (text, max, want) in cases {
            assert_eq!(clean_text(text, *max), *want, "{text:?} to {max}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn clean_text_is_bounded_clean_and_keeps_clean_short_text(text in ".{0,300}", max in 0usize..200) {
            let cleaned = clean_text(&text, max);
            prop_assert!(cleaned.len() <= max, "{} > {max}", cleaned.len());
            prop_assert!(!cleaned.chars().any(char::is_control));
            if text.len() <= max && !text.chars().any(char::is_control) {
                prop_assert_eq!(cleaned, text);
            }
        }
    }
}
