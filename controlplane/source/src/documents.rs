//! File text → documents, each parsed on its own so that a syntax error in
//! one document cannot take the rest of the file with it.
//!
//! Every YAML document is first screened by an event parser (granit-parser)
//! that keeps no tree: a document with an alias, or nested deeper than
//! [`Limits::max_depth`], is refused before serde_yaml_ng buffers its events
//! or expands anything. Only screened documents reach serde_yaml_ng, which
//! builds the values.

use granit_parser::{ErrorKind, Event, Parser, ScanError};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::Limits;

/// One document of a file: its value, or why it could not be parsed.
pub(crate) struct Document {
    /// 1-based position in the file.
    pub index: usize,
    pub value: Result<Value, String>,
}

/// Documents of a YAML stream.
///
/// serde_yaml_ng stops at the first syntax error (and its document iterator
/// then repeats that error forever), so the text is first cut at `---` lines
/// and each piece is parsed separately. YAML forbids `---` at the start of a
/// line inside content, so the cut never splits a node. A piece that fails
/// the screen is one refused document: documents joined to it by `...`
/// alone are refused with it.
pub(crate) fn yaml(text: &str, limits: &Limits) -> Vec<Document> {
    let mut docs = Vec::new();
    for chunk in chunks(text) {
        if let Err(reason) = screen(chunk.text, limits.max_depth) {
            docs.push(Document {
                index: docs.len() + 1,
                value: Err(reason.located(chunk.line)),
            });
            continue;
        }
        for de in serde_yaml_ng::Deserializer::from_str(chunk.text) {
            let index = docs.len() + 1;
            match Value::deserialize(de) {
                Ok(value) => docs.push(Document {
                    index,
                    value: Ok(value),
                }),
                Err(err) => {
                    let reason = shift_lines(&err.to_string(), chunk.line);
                    docs.push(Document {
                        index,
                        value: Err(format!("invalid YAML: {reason}")),
                    });
                    break;
                }
            }
        }
    }
    docs
}

/// Documents of a JSON file: one value, or several concatenated (as
/// `kubectl get -o json --watch` writes them). Parsing stops at a syntax
/// error, since JSON has no marker to resynchronise on, and at the value
/// nested deeper than [`Limits::max_depth`].
pub(crate) fn json(text: &str, limits: &Limits) -> Vec<Document> {
    // The text is parsed only up to the first bracket nested too deep; the
    // value holding it then ends early, and is refused.
    let too_deep = json_too_deep(text, limits.max_depth);
    let parsed = &text[..too_deep.unwrap_or(text.len())];
    let mut docs = Vec::new();
    for item in serde_json::Deserializer::from_str(parsed).into_iter::<serde_json::Value>() {
        let index = docs.len() + 1;
        match item {
            Ok(json) => docs.push(Document {
                index,
                value: serde_yaml_ng::to_value(&json).map_err(|e| format!("invalid JSON: {e}")),
            }),
            Err(err) => {
                let reason = match too_deep {
                    Some(at) if err.is_eof() => {
                        let (line, column) = line_and_column(text, at);
                        format!(
                            "refused: nested deeper than {} at line {line} column {column}",
                            limits.max_depth
                        )
                    }
                    _ => format!("invalid JSON: {err}"),
                };
                docs.push(Document {
                    index,
                    value: Err(reason),
                });
                break;
            }
        }
    }
    docs
}

/// Why a piece of YAML was refused, at a line counted within the piece.
#[derive(Debug, PartialEq)]
struct Refusal {
    what: String,
    /// 1-based, within the piece.
    line: usize,
    /// 1-based.
    column: usize,
}

impl Refusal {
    /// The reason as reported, with the line counted from the start of the
    /// file: the piece starts after `lines_before` lines.
    fn located(&self, lines_before: usize) -> String {
        format!(
            "{} at line {} column {}",
            self.what,
            self.line + lines_before,
            self.column
        )
    }
}

/// Characters of an alias's name shown in a refusal.
const MAX_SHOWN_NAME: usize = 64;

/// Walks a piece's events, keeping nothing but the nesting depth: refuses
/// the first alias, the first collection nested deeper than `max_depth`,
/// and the first syntax error.
fn screen(text: &str, max_depth: usize) -> Result<(), Refusal> {
    let mut options = granit_parser::Options::default();
    // An alias to a missing anchor is refused as an alias, not as a lookup.
    options.emit_unresolved_aliases = true;
    options.set_emit_comments(false);
    // The scanner reads ahead of the events; its own limits stop it at the
    // same depth.
    options.flow_nesting_limit = max_depth;
    options.block_nesting_limit = max_depth;
    let mut parser = Parser::new_from_str_with_options(text, options);
    let mut depth = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|err| scan_refusal(&err, max_depth))?;
        let refuse = |what: String| Refusal {
            what,
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        match event {
            Event::Alias(_) | Event::UnresolvedAlias(_) => {
                let name = span.slice(text).unwrap_or("*");
                let name: String = name.chars().take(MAX_SHOWN_NAME).collect();
                return Err(refuse(format!(
                    "refused: YAML alias {name} (aliases are not accepted)"
                )));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > max_depth {
                    return Err(refuse(format!("refused: nested deeper than {max_depth}")));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::DocumentStart(..) => depth = 0,
            Event::StreamEnd => break,
            _ => {}
        }
    }
    Ok(())
}

fn scan_refusal(err: &ScanError, max_depth: usize) -> Refusal {
    let what = match err.kind() {
        ErrorKind::RecursionLimitExceeded => format!("refused: nested deeper than {max_depth}"),
        _ => format!("invalid YAML: {}", err.info()),
    };
    Refusal {
        what,
        line: err.marker().line(),
        column: err.marker().col() + 1,
    }
}

/// `message` with every `line N column M` moved down by `lines_before`
/// lines: serde_yaml_ng counts lines within the piece it parsed.
fn shift_lines(message: &str, lines_before: usize) -> String {
    const LINE: &str = "line ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(LINE) {
        let (before, after) = rest.split_at(at + LINE.len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, tail) = after.split_at(digits);
        match number.parse::<usize>() {
            Ok(n) if tail.starts_with(" column ") => out.push_str(&(n + lines_before).to_string()),
            _ => out.push_str(number),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Byte offset of the first `[` or `{` nested deeper than `max_depth`, if
/// any: strings are skipped, everything else is left to serde_json.
fn json_too_deep(text: &str, max_depth: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (at, byte) in text.bytes().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Some(at);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// 1-based line and column of a byte offset, as serde_json counts them.
fn line_and_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..at.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.len()
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    (line, column)
}

/// A piece of the file holding one document (or several, if separated
/// only by `...`), starting at `line` (0-based) of the file.
#[derive(Debug, PartialEq)]
struct Chunk<'a> {
    line: usize,
    text: &'a str,
}

fn chunks(text: &str) -> Vec<Chunk<'_>> {
    // (byte offset, line) of each chunk start.
    let mut starts = vec![(0, 0)];
    let mut offset = 0;
    for (line, content) in text.split_inclusive('\n').enumerate() {
        if line > 0 && is_document_start(content) {
            starts.push((offset, line));
        }
        offset += content.len();
    }
    // Comments and directives before the first `---` belong to that document;
    // parsed alone they would count as an empty document of their own.
    if let Some(&(first_end, _)) = starts.get(1)
        && is_preamble(&text[..first_end])
    {
        starts.remove(1);
    }
    let ends = starts.iter().skip(1).map(|&(o, _)| o).chain([text.len()]);
    starts
        .iter()
        .zip(ends)
        .map(|(&(start, line), end)| Chunk {
            line,
            text: &text[start..end],
        })
        .collect()
}

fn is_document_start(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn is_preamble(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line.starts_with('%')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[(usize, &str)]) {
        let got: Vec<(usize, &str)> = chunks(text).iter().map(|c| (c.line, c.text)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn cuts_at_document_markers_only() {
        check("a: 1\n", &[(0, "a: 1\n")]);
        check(
            "a: 1\n---\nb: 2\n--- # c\nc: 3",
            &[(0, "a: 1\n"), (1, "---\nb: 2\n"), (3, "--- # c\nc: 3")],
        );
        // Not markers: `---` inside a word, or indented.
        check(
            "a: ---x\n---x: 1\n  ---\n",
            &[(0, "a: ---x\n---x: 1\n  ---\n")],
        );
        check(
            "a: 1\r\n---\r\nb: 2\r\n",
            &[(0, "a: 1\r\n"), (1, "---\r\nb: 2\r\n")],
        );
    }

    #[test]
    fn preamble_joins_the_first_document() {
        check(
            "# header\n%YAML 1.1\n---\na: 1\n---\nb: 2\n",
            &[(0, "# header\n%YAML 1.1\n---\na: 1\n"), (4, "---\nb: 2\n")],
        );
        check("---\na: 1\n", &[(0, "---\na: 1\n")]);
        check("", &[(0, "")]);
    }

    #[test]
    fn errors_of_the_value_parser_are_located_in_the_file() {
        // Two flow mappings in one document pass the screen; serde_yaml_ng
        // refuses the second, and its line counts within the piece.
        let docs = yaml("a: 1\n---\n{\"a\": 1}\n{\"b\": 2}\n", &Limits::default());
        let reasons: Vec<_> = docs.iter().filter_map(|d| d.value.as_ref().err()).collect();
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("at line 4 column 1"), "{reasons:?}");
        assert_eq!(
            shift_lines("x at line 2 column 3, while y at line 1 column 1", 10),
            "x at line 12 column 3, while y at line 11 column 1"
        );
        // Only positions move: other numbers after "line " stay.
        assert_eq!(
            shift_lines("line 5 of 9, line x", 10),
            "line 5 of 9, line x"
        );
    }

    #[test]
    fn json_depth_skips_strings() {
        let text = r#"{"a": "[[[\"[[{", "b": [[1]]}"#;
        assert_eq!(json_too_deep(text, 3), None);
        let at = json_too_deep(text, 2).expect("too deep");
        assert_eq!(&text[at..], "[1]]}");
        assert_eq!(line_and_column("a\nbc[", 4), (2, 3));
    }

    #[test]
    fn syntax_errors_are_located_in_the_file() {
        let docs = yaml("a: 1\n---\nb: [\n---\nc: 3\n", &Limits::default());
        let got: Vec<(usize, Result<Value, String>)> =
            docs.into_iter().map(|d| (d.index, d.value)).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1, Ok(serde_yaml_ng::from_str("a: 1").unwrap()));
        assert!(
            got[1]
                .1
                .as_ref()
                .is_err_and(|e| e.ends_with("at line 3 column 4")),
            "{got:?}"
        );
        assert_eq!(got[2].1, Ok(serde_yaml_ng::from_str("c: 3").unwrap()));
    }
}
