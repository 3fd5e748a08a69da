//! Label selectors as kubectl writes them: `app=web`, `tier!=db`, `env`,
//! `!canary`, `app in (a,b)`, joined with commas; all terms must hold.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(pub Vec<Requirement>);

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {input:?}: {why} (write e.g. app=web,tier!=db or 'env in (a,b)')")]
pub struct SelectorError {
    pub input: String,
    pub why: String,
}

impl Selector {
    /// Parses a selector string.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let err = |why: &str| SelectorError {
            input: input.to_string(),
            why: why.to_string(),
        };
        let mut reqs = Vec::new();
        for term in split_terms(input) {
            let term = term.trim();
            if term.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(err("empty term"));
            }
            let req = if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(checked_key(k.trim()).map_err(|w| err(&w))?)
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(
                    checked_key(k.trim()).map_err(|w| err(&w))?,
                    v.trim().to_string(),
                )
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(
                    checked_key(k.trim()).map_err(|w| err(&w))?,
                    v.trim().to_string(),
                )
            } else if let Some((k, rest)) = split_set_op(term, " notin ") {
                Requirement::NotIn(
                    checked_key(k).map_err(|w| err(&w))?,
                    parse_set(rest).ok_or_else(|| err("expected (a,b) after notin"))?,
                )
            } else if let Some((k, rest)) = split_set_op(term, " in ") {
                Requirement::In(
                    checked_key(k).map_err(|w| err(&w))?,
                    parse_set(rest).ok_or_else(|| err("expected (a,b) after in"))?,
                )
            } else {
                Requirement::Exists(checked_key(term).map_err(|w| err(&w))?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }

    /// A selector requiring every pair of a map (a pod's `nodeSelector`).
    pub fn from_map(map: &BTreeMap<String, String>) -> Selector {
        Selector(
            map.iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
        )
    }
}

fn split_terms(s: &str) -> Vec<&str> {
    // Commas inside `in (a,b)` do not split terms.
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn split_set_op<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    term.find(op)
        .map(|i| (term[..i].trim(), term[i + op.len()..].trim()))
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn checked_key(k: &str) -> Result<String, String> {
    if crate::manifest::is_label_key(k) {
        Ok(k.to_string())
    } else {
        Err(format!("{k:?} is not a label key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_as_kubectl() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("tier", true),
            ("!tier", false),
            ("!canary", true),
            ("app in (web,db)", true),
            ("app notin (web)", false),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
        ];
        for (s, want) in cases {
            assert_eq!(Selector::parse(s).map(|x| x.matches(&l)), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        for s in ["app=web,,x", "=v", "app in web", "bad key=1"] {
            assert!(Selector::parse(s).is_err(), "{s}");
        }
    }
}
