//! `.env` files as Docker Compose and most tools read them: `KEY=VALUE` per line,
//! `#` comments and blank lines skipped, an optional `export ` prefix, and a value in
//! matching single or double quotes taken literally without them. An unquoted value
//! ends where a `#` after whitespace starts a comment, as in Compose. A `$` outside
//! single quotes is refused: Compose expands it (`$VAR`, `${VAR}`), so the value
//! check-config would judge is not the one the services would get.

use std::collections::HashMap;

/// One line this parser cannot read as Compose does.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The variables in `text`; a later line wins over an earlier one.
pub fn parse(text: &str) -> Result<HashMap<String, String>, BadLine> {
    let mut vars = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let bad = |why| BadLine {
            line: index + 1,
            why,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad("expected KEY=VALUE"));
        };
        let key = key.trim();
        let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad("expected KEY=VALUE"));
        }
        let value = value.trim();
        let (value, literal) =
            if let Some(v) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                (v, true)
            } else if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                (v, false)
            } else {
                // An inline comment: `#` after whitespace.
                let end = value
                    .char_indices()
                    .find(|&(i, c)| c == '#' && value[..i].ends_with(char::is_whitespace))
                    .map_or(value.len(), |(i, _)| i);
                (value[..end].trim_end(), false)
            };
        if !literal && value.contains('$') {
            return Err(bad(
                "`$` is expanded by Docker Compose: put the value in single quotes",
            ));
        }
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

    /// What Compose reads differently from a naive split: an inline comment cuts an
    /// unquoted value (so `?sslmode=require` after ` #` is not part of the URL), a
    /// `#` inside a word does not, and a `$` is expanded unless single-quoted.
    #[test]
    fn comments_and_expansions_as_compose_reads_them() -> Result<(), BadLine> {
        let vars =
            parse("DATABASE_URL=postgres://db/aia #?sslmode=require\nA=x#y\nB='$literal'\n")?;
        assert_eq!(
            vars.get("DATABASE_URL").map(String::as_str),
            Some("postgres://db/aia")
        );
        assert_eq!(vars.get("A").map(String::as_str), Some("x#y"));
        assert_eq!(vars.get("B").map(String::as_str), Some("$literal"));
        for expanded in ["P=pa$word\n", "P=\"pa${word}\"\n"] {
            let refused = parse(expanded).err();
            assert!(
                refused.as_ref().is_some_and(|e| e.why.contains('$')),
                "{expanded}: {refused:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_line_without_a_key_is_refused_with_its_number() {
        assert_eq!(parse("A=1\nnonsense\n").err().map(|e| e.line), Some(2));
        assert_eq!(parse("BAD KEY=1\n").err().map(|e| e.line), Some(1));
    }
}
