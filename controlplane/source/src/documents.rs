//! File text → documents, each parsed on its own so that a syntax error in
//! one document cannot take the rest of the file with it.

use serde::Deserialize;
use serde_yaml_ng::Value;

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
/// line inside content, so the cut never splits a node.
pub(crate) fn yaml(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    for chunk in chunks(text) {
        for de in serde_yaml_ng::Deserializer::from_str(chunk.text) {
            let index = docs.len() + 1;
            match Value::deserialize(de) {
                Ok(value) => docs.push(Document {
                    index,
                    value: Ok(value),
                }),
                Err(err) => {
                    let reason = chunk_error(&chunk).unwrap_or_else(|| err.to_string());
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
/// error, since JSON has no marker to resynchronise on.
pub(crate) fn json(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    for item in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        let index = docs.len() + 1;
        match item {
            Ok(json) => docs.push(Document {
                index,
                value: serde_yaml_ng::to_value(&json).map_err(|e| format!("invalid JSON: {e}")),
            }),
            Err(err) => {
                docs.push(Document {
                    index,
                    value: Err(format!("invalid JSON: {err}")),
                });
                break;
            }
        }
    }
    docs
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

/// The chunk's first error, with line numbers counted from the start of the
/// file: the chunk is parsed again behind as many blank lines as precede it.
/// Only done on the error path, so large files stay linear.
fn chunk_error(chunk: &Chunk<'_>) -> Option<String> {
    let padded = format!("{}{}", "\n".repeat(chunk.line), chunk.text);
    serde_yaml_ng::Deserializer::from_str(&padded)
        .map(Value::deserialize)
        .find_map(Result::err)
        .map(|err| err.to_string())
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
    fn syntax_errors_are_located_in_the_file() {
        let docs = yaml("a: 1\n---\nb: [\n---\nc: 3\n");
        let got: Vec<(usize, Result<Value, String>)> =
            docs.into_iter().map(|d| (d.index, d.value)).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1, Ok(serde_yaml_ng::from_str("a: 1").unwrap()));
        assert!(
            got[1].1.as_ref().is_err_and(|e| e.contains("line 4")),
            "{got:?}"
        );
        assert_eq!(got[2].1, Ok(serde_yaml_ng::from_str("c: 3").unwrap()));
    }
}
