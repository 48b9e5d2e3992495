//! `.env` files as Docker Compose and most tools read them: `KEY=VALUE` per line,
//! `#` comments and blank lines skipped, an optional `export ` prefix, and a value in
//! matching single or double quotes taken literally without them.

use std::collections::HashMap;

/// One line that is not a comment, a blank or `KEY=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: expected KEY=VALUE")]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
}

/// The variables in `text`; a later line wins over an earlier one.
pub fn parse(text: &str) -> Result<HashMap<String, String>, BadLine> {
    let mut vars = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(BadLine { line: index + 1 });
        };
        let key = key.trim();
        let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(BadLine { line: index + 1 });
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.insert(key.to_owned(), value.to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_compose_reads() -> Result<(), BadLine> {
        let vars = parse(
            "# comment\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\"\nD='x'\nA=3\nE=\n",
        )?;
        assert_eq!(vars.get("A").map(String::as_str), Some("3"));
        assert_eq!(vars.get("B").map(String::as_str), Some("two words"));
        assert_eq!(
            vars.get("C").map(String::as_str),
            Some("quoted # not a comment")
        );
        assert_eq!(vars.get("D").map(String::as_str), Some("x"));
        assert_eq!(vars.get("E").map(String::as_str), Some(""));
        Ok(())
    }

    #[test]
    fn a_line_without_a_key_is_refused_with_its_number() {
        assert_eq!(parse("A=1\nnonsense\n").err().map(|e| e.line), Some(2));
        assert_eq!(parse("BAD KEY=1\n").err().map(|e| e.line), Some(1));
    }
}
