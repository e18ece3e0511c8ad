//! The attachment rule, in the host so that every resolver gets the same
//! one: an item is attached to a patient only if every key that resolves
//! agrees on one guid. Never attach an image to a patient we are not sure
//! of.

use std::collections::HashMap;

use crate::bindings::resolver_world::exports::ferry::pipeline::resolver::Resolution;
use crate::bindings::types::PatientKey;

/// A guid is used in object keys and URLs: keep it to a safe alphabet.
pub fn valid_guid(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 128
        && !g.starts_with('.')
        && g.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// What to do with an item, given the resolutions of its keys.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Attach(String),
    Unresolved(String),
    Quarantine(String),
    Invalid(String),
}

/// The attachment rule: every key that resolves must agree on one guid;
/// a key resolving to several patients quarantines the item; keys the
/// PMS does not know (or the resolver does not handle) are ignored when
/// another key resolves, because they say nothing against it.
pub fn decide(keys: &[PatientKey], answers: &HashMap<(String, String), Resolution>) -> Decision {
    let mut guids: Vec<&str> = Vec::new();
    for k in keys {
        match answers.get(&(k.scheme.clone(), k.value.clone())) {
            Some(Resolution::Resolved(g)) => {
                if !valid_guid(g) {
                    return Decision::Invalid(format!(
                        "the resolver returned an unusable patient guid for a `{}` key (allowed: letters, digits, - _ .)",
                        k.scheme
                    ));
                }
                if !guids.contains(&g.as_str()) {
                    guids.push(g);
                }
            }
            Some(Resolution::Ambiguous(gs)) => {
                return Decision::Quarantine(format!(
                    "a `{}` key belongs to {} patients in the PMS",
                    k.scheme,
                    gs.len()
                ))
            }
            _ => {}
        }
    }
    match guids.len() {
        1 => Decision::Attach(guids[0].to_owned()),
        0 => {
            let schemes: Vec<&str> = keys.iter().map(|k| k.scheme.as_str()).collect();
            Decision::Unresolved(if keys.is_empty() {
                "the source gave no patient keys".into()
            } else {
                format!("no key resolved to a patient ({} keys tried: {})", keys.len(), schemes.join(", "))
            })
        }
        n => Decision::Quarantine(format!("the item's card ids resolve to {n} different patients")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, v: &str) -> PatientKey {
        PatientKey { scheme: s.into(), value: v.into() }
    }

    fn answers(list: &[(&str, &str, Resolution)]) -> HashMap<(String, String), Resolution> {
        list.iter().map(|(s, v, r)| ((s.to_string(), v.to_string()), r.clone())).collect()
    }

    #[test]
    fn attachment_rule() {
        let keys = [key("sidexis-id", "17"), key("card-id", "A"), key("card-id", "B")];
        let a = answers(&[
            ("sidexis-id", "17", Resolution::Unsupported),
            ("card-id", "A", Resolution::Resolved("g1".into())),
            ("card-id", "B", Resolution::Resolved("g1".into())),
        ]);
        assert_eq!(decide(&keys, &a), Decision::Attach("g1".into()));

        let a = answers(&[("card-id", "A", Resolution::Resolved("g1".into())), ("card-id", "B", Resolution::NotFound)]);
        assert_eq!(decide(&keys, &a), Decision::Attach("g1".into()));

        let a = answers(&[
            ("card-id", "A", Resolution::Resolved("g1".into())),
            ("card-id", "B", Resolution::Resolved("g2".into())),
        ]);
        assert!(matches!(decide(&keys, &a), Decision::Quarantine(_)));

        let a = answers(&[("card-id", "A", Resolution::Ambiguous(vec!["g1".into(), "g2".into()]))]);
        assert!(matches!(decide(&keys, &a), Decision::Quarantine(_)));

        let a = answers(&[("card-id", "A", Resolution::NotFound)]);
        assert!(matches!(decide(&keys, &a), Decision::Unresolved(_)));

        let a = answers(&[("card-id", "A", Resolution::Resolved("../etc".into()))]);
        assert!(matches!(decide(&keys, &a), Decision::Invalid(_)));
    }
}
