//! Reading variables out of an environment map, collecting every problem.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// One thing wrong with the configuration: which variable, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The environment variable at fault.
    pub variable: String,
    /// What is wrong and how to fix it. Never contains the variable's value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// Every problem found while reading the settings.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", list(.0))]
pub struct SettingsError(pub Vec<Problem>);

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An environment to read settings from, plus the problems found so far.
#[derive(Default)]
pub struct Env {
    vars: HashMap<String, String>,
    problems: Vec<Problem>,
}

/// Names only: the values are secrets as often as not.
impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env")
            .field("names", &names)
            .field("problems", &self.problems)
            .finish()
    }
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_iter(std::env::vars())
    }

    /// Records a problem with `variable`.
    pub fn problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            variable: variable.to_owned(),
            message: message.into(),
        });
    }

    /// The raw value, with empty strings treated as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The value or a default.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// The value parsed as `T`, or `default` when unset. A value that does not parse
    /// is a problem (and `default` is returned so reading can go on).
    pub fn parse<T>(&mut self, name: &str, default: T) -> T
    where
        T: FromStr,
    {
        match self.get(name).map(|v| v.trim().parse::<T>()) {
            None => default,
            Some(Ok(v)) => v,
            Some(Err(_)) => {
                self.problem(
                    name,
                    format!("is not a valid {}", std::any::type_name::<T>()),
                );
                default
            }
        }
    }

    /// Like [`Env::parse`], and the value must lie in `min..=max`.
    pub fn parse_in<T>(&mut self, name: &str, default: T, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let v = self.parse(name, default);
        if v < min || v > max {
            self.problem(name, format!("must be between {min} and {max}"));
            return default;
        }
        v
    }

    /// A boolean: `true/false`, `1/0`, `yes/no`, `on/off`.
    pub fn flag(&mut self, name: &str, default: bool) -> bool {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => default,
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    self.problem(name, "must be true or false");
                    default
                }
            },
        }
    }

    /// Ends reading: the value if there was no problem, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, SettingsError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(SettingsError(self.problems))
        }
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self {
            vars: iter.into_iter().collect(),
            problems: Vec::new(),
        }
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Env {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        iter.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_variables_without_their_values() {
        let env: Env = [("SESSION_SECRET", "s3cr3t-value-never-printed")]
            .into_iter()
            .collect();
        let shown = format!("{env:?}");
        assert!(shown.contains("SESSION_SECRET"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut env: Env = [("A", "x"), ("B", "maybe")].into_iter().collect();
        let _ = env.parse::<u32>("A", 1);
        let _ = env.flag("B", false);
        let err = env.finish(()).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(err.len(), 2);
        assert_eq!(err[0].variable, "A");
        assert_eq!(err[1].variable, "B");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let mut env: Env = [("N", "0")].into_iter().collect();
        assert_eq!(env.parse_in::<u32>("N", 5, 1, 10), 5);
        assert!(env.finish(()).is_err());
    }
}
