//! What pods and nodes say about placement, in Kubernetes' shape: taints on
//! nodes and the tolerations that let pods past them, node affinity
//! (required and preferred), topology spread constraints and label
//! selectors. The matching rules live here, beside the types, so the
//! scheduler, the CLI and the validation all read them the same way.

use crate::manifest::{fe, is_label_key, FieldError};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What a taint does to pods that do not tolerate it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TaintEffect {
    /// No new pod is placed on the node.
    #[default]
    NoSchedule,
    /// The scheduler avoids the node when it can.
    PreferNoSchedule,
    /// No new pod is placed, and pods running there are evicted.
    NoExecute,
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A mark on a node that repels pods which do not tolerate it
/// (`flotilla taint node pi-1 dedicated=gpu:NoSchedule`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Taint {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub key: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub value: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub effect: TaintEffect,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub time_added: Option<Time>,
}

impl fmt::Display for Taint {
    /// `key=value:Effect` (`key:Effect` without a value), as kubectl writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// How a toleration compares its key and value with a taint's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TolerationOperator {
    /// Key and value must both match.
    #[default]
    Equal,
    /// The key must match (every key, if empty); the value is not looked at.
    Exists,
}

/// Lets a pod onto (or stay on) nodes with a matching taint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Toleration {
    /// Empty with `Exists`: tolerates every taint.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub key: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub operator: TolerationOperator,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub value: String,
    /// None: tolerates every effect.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub effect: Option<TaintEffect>,
    /// For `NoExecute`: how long the pod stays after the taint appears
    /// (None: for good).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub toleration_seconds: Option<i64>,
}

impl Toleration {
    /// Whether this toleration tolerates `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

/// Where a pod would like to run, beyond `nodeSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Affinity {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub node_affinity: Option<NodeAffinity>,
}

/// Rules over a node's labels: required ones filter, preferred ones score.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeAffinity {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// Terms ORed together: a node matches if it matches any term.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeSelector {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

impl NodeSelector {
    /// Whether a node with `labels` matches some term (no term: no node).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms.iter().any(|t| t.matches(labels))
    }
}

/// Requirements ANDed together.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeSelectorTerm {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

impl NodeSelectorTerm {
    /// Whether `labels` meet every requirement (an empty term matches nothing,
    /// as in Kubernetes).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.match_expressions.is_empty()
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// How a requirement compares a label with its values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum NodeSelectorOperator {
    #[default]
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// The label, an integer, is greater than the one value.
    Gt,
    /// The label, an integer, is less than the one value.
    Lt,
}

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeSelectorRequirement {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub key: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub operator: NodeSelectorOperator,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub values: Vec<String>,
}

impl NodeSelectorRequirement {
    /// Whether `labels` meet the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let number = |s: &str| s.parse::<i64>().ok();
        match self.operator {
            NodeSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            NodeSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            NodeSelectorOperator::Exists => value.is_some(),
            NodeSelectorOperator::DoesNotExist => value.is_none(),
            NodeSelectorOperator::Gt | NodeSelectorOperator::Lt => {
                let (Some(have), Some(want)) = (
                    value.and_then(|v| number(v)),
                    self.values.first().and_then(|v| number(v)),
                ) else {
                    return false;
                };
                if self.operator == NodeSelectorOperator::Gt {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// A preference with its weight (1 to 100).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PreferredSchedulingTerm {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub weight: i32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub preference: NodeSelectorTerm,
}

/// What to do with a pod that would break a spread constraint.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum UnsatisfiableConstraintAction {
    /// Leave it Pending.
    #[default]
    DoNotSchedule,
    /// Place it anyway, preferring the placements that skew least.
    ScheduleAnyway,
}

/// Spreads the pods matching `labelSelector` over the values of a node
/// label (`topologyKey`, e.g. `topology.kubernetes.io/zone`), so that the
/// counts in any two domains differ by at most `maxSkew`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TopologySpreadConstraint {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub max_skew: i32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub topology_key: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub when_unsatisfiable: UnsatisfiableConstraintAction,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub label_selector: Option<LabelSelector>,
}

/// Selects objects by their labels: every `matchLabels` pair and every
/// expression must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// Whether `labels` are selected (an empty selector selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// How a label selector requirement compares a label with its values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum LabelSelectorOperator {
    #[default]
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One requirement of a [`LabelSelector`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub key: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub operator: LabelSelectorOperator,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub values: Vec<String>,
}

impl LabelSelectorRequirement {
    /// Whether `labels` meet the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelSelectorOperator::Exists => value.is_some(),
            LabelSelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Whether a pod may evict lower-priority pods to fit.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum PreemptionPolicy {
    #[default]
    PreemptLowerPriority,
    Never,
}

/// Checks a pod's tolerations, affinity and spread constraints; errors name
/// the field path (`spec.tolerations[0].value`).
pub fn validate_placement(
    tolerations: &[Toleration],
    affinity: Option<&Affinity>,
    spread: &[TopologySpreadConstraint],
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let path = format!("spec.tolerations[{i}]");
        match t.operator {
            TolerationOperator::Exists if !t.value.is_empty() => errors.push(fe(
                format!("{path}.value"),
                "must be empty with operator Exists (it matches any value)",
            )),
            TolerationOperator::Equal if t.key.is_empty() => errors.push(fe(
                format!("{path}.key"),
                "required with operator Equal; use operator Exists to tolerate every taint",
            )),
            _ => {}
        }
        if !t.key.is_empty() && !is_label_key(&t.key) {
            errors.push(fe(
                format!("{path}.key"),
                format!("{:?} is not a valid taint key", t.key),
            ));
        }
        if t.toleration_seconds.is_some() && t.effect != Some(TaintEffect::NoExecute) {
            errors.push(fe(
                format!("{path}.tolerationSeconds"),
                "only for effect NoExecute (how long the pod stays once such a taint appears)",
            ));
        }
    }
    let node = affinity.and_then(|a| a.node_affinity.as_ref());
    if let Some(required) = node.and_then(|n| {
        n.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        let base = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution";
        if required.node_selector_terms.is_empty() {
            errors.push(fe(
                format!("{base}.nodeSelectorTerms"),
                "at least one term is required (terms are ORed; a node must match one)",
            ));
        }
        for (i, term) in required.node_selector_terms.iter().enumerate() {
            validate_term(term, &format!("{base}.nodeSelectorTerms[{i}]"), &mut errors);
        }
    }
    for (i, p) in node
        .map(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_slice()
        })
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let base = format!(
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}]"
        );
        if !(1..=100).contains(&p.weight) {
            errors.push(fe(format!("{base}.weight"), "must be 1 to 100"));
        }
        validate_term(&p.preference, &format!("{base}.preference"), &mut errors);
    }
    for (i, c) in spread.iter().enumerate() {
        let base = format!("spec.topologySpreadConstraints[{i}]");
        if c.max_skew < 1 {
            errors.push(fe(format!("{base}.maxSkew"), "must be at least 1"));
        }
        if !is_label_key(&c.topology_key) {
            errors.push(fe(
                format!("{base}.topologyKey"),
                "required: a node label key such as topology.kubernetes.io/zone or flotilla.dev/hostname",
            ));
        }
        if let Some(sel) = &c.label_selector {
            for (j, r) in sel.match_expressions.iter().enumerate() {
                let path = format!("{base}.labelSelector.matchExpressions[{j}].values");
                let wants_values = matches!(
                    r.operator,
                    LabelSelectorOperator::In | LabelSelectorOperator::NotIn
                );
                if wants_values == r.values.is_empty() {
                    errors.push(fe(
                        path,
                        if wants_values {
                            "required with In and NotIn"
                        } else {
                            "must be empty with Exists and DoesNotExist"
                        },
                    ));
                }
            }
        }
    }
    errors
}

fn validate_term(term: &NodeSelectorTerm, base: &str, errors: &mut Vec<FieldError>) {
    for (j, r) in term.match_expressions.iter().enumerate() {
        let path = format!("{base}.matchExpressions[{j}]");
        if !is_label_key(&r.key) {
            errors.push(fe(
                format!("{path}.key"),
                format!("{:?} is not a valid label key", r.key),
            ));
        }
        use NodeSelectorOperator::*;
        let problem = match r.operator {
            In | NotIn if r.values.is_empty() => Some("required with In and NotIn"),
            Exists | DoesNotExist if !r.values.is_empty() => {
                Some("must be empty with Exists and DoesNotExist")
            }
            Gt | Lt if r.values.len() != 1 || r.values[0].parse::<i64>().is_err() => {
                Some("Gt and Lt take exactly one integer")
            }
            _ => None,
        };
        if let Some(p) = problem {
            errors.push(fe(format!("{path}.values"), p));
        }
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

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
            time_added: None,
        }
    }

    fn tol(
        key: &str,
        op: TolerationOperator,
        value: &str,
        effect: Option<TaintEffect>,
    ) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op,
            value: value.into(),
            effect,
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_table() {
        use TaintEffect::*;
        use TolerationOperator::*;
        let gpu = taint("dedicated", "gpu", NoSchedule);
        let cases = [
            (tol("dedicated", Equal, "gpu", None), &gpu, true),
            (tol("dedicated", Equal, "gpu", Some(NoSchedule)), &gpu, true),
            (tol("dedicated", Equal, "gpu", Some(NoExecute)), &gpu, false),
            (tol("dedicated", Equal, "cpu", None), &gpu, false),
            (tol("dedicated", Exists, "", None), &gpu, true),
            (tol("other", Exists, "", None), &gpu, false),
            (tol("", Exists, "", None), &gpu, true),
            (tol("", Exists, "", Some(PreferNoSchedule)), &gpu, false),
            (tol("", Equal, "", None), &gpu, false),
        ];
        for (t, taint, want) in cases {
            assert_eq!(t.tolerates(taint), want, "{t:?} vs {taint}");
        }
        assert_eq!(gpu.to_string(), "dedicated=gpu:NoSchedule");
        assert_eq!(taint("x", "", NoExecute).to_string(), "x:NoExecute");
    }

    #[test]
    fn node_selector_requirements_table() {
        use NodeSelectorOperator::*;
        let node = labels(&[("zone", "a"), ("cores", "4")]);
        let req = |key: &str, op, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let cases = [
            (req("zone", In, &["a", "b"]), true),
            (req("zone", In, &["b"]), false),
            (req("missing", In, &["a"]), false),
            (req("zone", NotIn, &["b"]), true),
            (req("zone", NotIn, &["a"]), false),
            (req("missing", NotIn, &["a"]), true),
            (req("zone", Exists, &[]), true),
            (req("missing", Exists, &[]), false),
            (req("missing", DoesNotExist, &[]), true),
            (req("zone", DoesNotExist, &[]), false),
            (req("cores", Gt, &["2"]), true),
            (req("cores", Gt, &["4"]), false),
            (req("cores", Lt, &["8"]), true),
            (req("zone", Gt, &["1"]), false),
            (req("cores", Lt, &[]), false),
        ];
        for (r, want) in cases {
            assert_eq!(r.matches(&node), want, "{r:?}");
        }
        // Terms: requirements AND, terms OR; an empty term matches nothing.
        let term = |rs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: rs,
        };
        let sel = NodeSelector {
            node_selector_terms: vec![
                term(vec![req("zone", In, &["b"])]),
                term(vec![req("zone", In, &["a"]), req("cores", Gt, &["2"])]),
            ],
        };
        assert!(sel.matches(&node));
        assert!(!NodeSelector::default().matches(&node));
        assert!(!term(vec![]).matches(&node));
    }

    #[test]
    fn label_selectors_table() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let sel = |m: &[(&str, &str)], e: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: labels(m),
            match_expressions: e,
        };
        let req = |key: &str, op, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        use LabelSelectorOperator::*;
        let cases = [
            (sel(&[], vec![]), true),
            (sel(&[("app", "web")], vec![]), true),
            (sel(&[("app", "db")], vec![]), false),
            (
                sel(&[("app", "web")], vec![req("tier", In, &["front"])]),
                true,
            ),
            (sel(&[], vec![req("tier", NotIn, &["front"])]), false),
            (sel(&[], vec![req("gone", DoesNotExist, &[])]), true),
            (sel(&[], vec![req("app", Exists, &[])]), true),
        ];
        for (s, want) in cases {
            assert_eq!(s.matches(&pod), want, "{s:?}");
        }
    }
}
