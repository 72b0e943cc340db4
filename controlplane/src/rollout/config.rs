//! What `serve --rollout canary` is told: how many canaries
//! ([`Share`]), which nodes may be ones ([`LabelSelector`]), how long they
//! soak, what halts; and which nodes [`choose_canaries`] picks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// The labels of every Node among `objects`, by node name.
pub fn node_labels<'a>(
    objects: impl IntoIterator<Item = &'a setpoint_compute::ClusterObject>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    objects
        .into_iter()
        .filter_map(|o| match o {
            setpoint_compute::ClusterObject::Node(n) => Some((
                n.metadata.name.clone().unwrap_or_default(),
                n.metadata.labels.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

/// How many nodes are canaries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Share {
    /// A percentage of the candidates (rounded up, at least one node).
    Percent(f64),
    /// This many candidates.
    Count(usize),
}

/// Why a `--canary-share` does not parse.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ShareError {
    #[error("{0:?}: expected a percentage like 5%")]
    NotAPercentage(String),
    #[error("{0:?}: the share must be in (0%, 100%]")]
    PercentageOutOfRange(String),
    #[error("{0:?}: expected a node count or a percentage like 5%")]
    NotACount(String),
    #[error("the canary count must be at least 1")]
    NoCanaries,
}

impl std::str::FromStr for Share {
    type Err = ShareError;
    fn from_str(s: &str) -> Result<Share, ShareError> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| ShareError::NotAPercentage(s.to_string()))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(ShareError::PercentageOutOfRange(s.to_string()));
            }
            Ok(Share::Percent(p))
        } else {
            let n: usize = s
                .parse()
                .map_err(|_| ShareError::NotACount(s.to_string()))?;
            if n == 0 {
                return Err(ShareError::NoCanaries);
            }
            Ok(Share::Count(n))
        }
    }
}

/// A `key=value` Node label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    pub key: String,
    pub value: String,
}

/// A `--canary-selector` that is not `key=value`.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0:?}: expected key=value")]
pub struct LabelSelectorError(String);

impl std::str::FromStr for LabelSelector {
    type Err = LabelSelectorError;
    fn from_str(s: &str) -> Result<LabelSelector, LabelSelectorError> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok(LabelSelector {
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            }),
            _ => Err(LabelSelectorError(s.to_string())),
        }
    }
}

/// `serve --rollout canary` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutConfig {
    /// How many candidates are canaries; `None`: all candidates when a
    /// selector is given, else 5%.
    pub share: Option<Share>,
    /// Candidates are the nodes with all these labels (all nodes if none).
    pub selector: Vec<LabelSelector>,
    /// How long every canary must have held the revision, without a
    /// failure, before the rest get it.
    pub soak: Duration,
    /// This many failing canaries (a nack after the rollout started, or
    /// silence after acking) halt the rollout.
    pub failure_threshold: usize,
    /// A canary that acked the target and has not been heard from (ack,
    /// heartbeat) for longer than this has failed: the revision may have
    /// cut its path to the control plane.
    pub canary_silence: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            share: None,
            selector: Vec::new(),
            soak: Duration::from_secs(30),
            failure_threshold: 1,
            canary_silence: Duration::from_secs(30),
        }
    }
}

/// Deterministic and stable: candidates ordered by SHA-256 of their name
/// (a node keeps its place whatever other nodes come and go), the first
/// `share` of them.
pub fn choose_canaries(
    config: &RolloutConfig,
    nodes: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeSet<String> {
    let mut candidates: Vec<([u8; 32], &String)> = nodes
        .iter()
        .filter(|(_, labels)| {
            config
                .selector
                .iter()
                .all(|s| labels.get(&s.key) == Some(&s.value))
        })
        .map(|(name, _)| (Sha256::digest(name.as_bytes()).into(), name))
        .collect();
    candidates.sort();
    let share = config.share.unwrap_or(if config.selector.is_empty() {
        Share::Percent(5.0)
    } else {
        Share::Percent(100.0)
    });
    let count = match share {
        Share::Count(n) => n,
        Share::Percent(p) => (candidates.len() as f64 * p / 100.0).ceil() as usize,
    }
    .max(1)
    .min(candidates.len());
    candidates
        .into_iter()
        .take(count)
        .map(|(_, n)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_are_deterministic_stable_and_sized() {
        let nodes: BTreeMap<String, BTreeMap<String, String>> = (0..200)
            .map(|i| {
                let zone = if i % 2 == 0 { "z1" } else { "z2" };
                (
                    format!("node-{i}"),
                    BTreeMap::from([("zone".to_string(), zone.to_string())]),
                )
            })
            .collect();
        let config = RolloutConfig::default();
        let five = choose_canaries(&config, &nodes);
        assert_eq!(five.len(), 10, "5% of 200");
        assert_eq!(five, choose_canaries(&config, &nodes));
        // Adding nodes never removes a canary that still ranks first.
        let mut more = nodes.clone();
        more.insert("node-new".into(), BTreeMap::new());
        let with_new = choose_canaries(&config, &more);
        assert!(five.difference(&with_new).count() <= 1);
        let selected = RolloutConfig {
            selector: vec!["zone=z1".parse().expect("selector")],
            ..RolloutConfig::default()
        };
        let z1 = choose_canaries(&selected, &nodes);
        assert_eq!(z1.len(), 100, "a selector alone: every match");
        assert!(z1.iter().all(|n| nodes[n]["zone"] == "z1"));
        let two = RolloutConfig {
            share: Some(Share::Count(2)),
            ..selected
        };
        assert_eq!(choose_canaries(&two, &nodes).len(), 2);
        let one = BTreeMap::from([("only".to_string(), BTreeMap::new())]);
        assert_eq!(choose_canaries(&config, &one).len(), 1, "at least one");
        assert!(choose_canaries(&config, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn shares_and_selectors_parse() {
        assert_eq!("5%".parse::<Share>(), Ok(Share::Percent(5.0)));
        assert_eq!("3".parse::<Share>(), Ok(Share::Count(3)));
        for (bad, says) in [
            ("0", "the canary count must be at least 1"),
            ("0%", r#""0%": the share must be in (0%, 100%]"#),
            ("101%", r#""101%": the share must be in (0%, 100%]"#),
            ("x%", r#""x%": expected a percentage like 5%"#),
            ("x", r#""x": expected a node count or a percentage like 5%"#),
            (
                "-1",
                r#""-1": expected a node count or a percentage like 5%"#,
            ),
            ("", r#""": expected a node count or a percentage like 5%"#),
        ] {
            let e = bad.parse::<Share>().expect_err(bad);
            assert_eq!(e.to_string(), says, "{bad}");
        }
        assert!("a=b".parse::<LabelSelector>().is_ok());
        assert!("a=".parse::<LabelSelector>().is_ok());
        for bad in ["=b", "ab"] {
            let e = bad.parse::<LabelSelector>().expect_err(bad);
            assert_eq!(e.to_string(), format!("{bad:?}: expected key=value"));
        }
    }
}
