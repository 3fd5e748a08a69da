//! What the workload kinds (ReplicaSet, Deployment, and those to come)
//! share: the pod template they stamp pods from, replica counts given as a
//! number or a percentage, and the conditions of their status.

use super::pod::{validate_spec, PodSpec, RestartPolicy};
use super::scheduling::{validate_placement, LabelSelector};
use crate::manifest::{fe, is_label_key, is_label_value, FieldError};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The label a Deployment gives each ReplicaSet (and its pods), the hash
/// of the pod template it was made from.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.flotilla.dev/revision";
/// The annotation `rollout history` shows as the cause of a revision.
pub const CHANGE_CAUSE: &str = "flotilla.dev/change-cause";
/// The template annotation `rollout restart` sets, so that the template
/// changes and every pod is replaced.
pub const RESTARTED_AT: &str = "flotilla.dev/restartedAt";

/// The labels and annotations every pod made from a template gets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TemplateMeta {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub annotations: BTreeMap<String, String>,
}

/// What pods a controller makes look like.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodTemplateSpec {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: TemplateMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: PodSpec,
}

impl PodTemplateSpec {
    /// A short, stable name for this template: the `pod-template-hash` a
    /// Deployment gives the ReplicaSet made from it (ten letters and digits
    /// from a SHA-256 of the template without that label).
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let mut t = self.clone();
        t.metadata.labels.remove(POD_TEMPLATE_HASH);
        let json = serde_json::to_vec(&t).unwrap_or_default();
        let digest = sha2::Sha256::digest(&json);
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
        (0..10)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
                n /= ALPHABET.len() as u64;
                char::from(c)
            })
            .collect()
    }

    /// Whether two templates are the same but for the `pod-template-hash` label.
    pub fn same_as(&self, other: &PodTemplateSpec) -> bool {
        let strip = |t: &PodTemplateSpec| {
            let mut t = t.clone();
            t.metadata.labels.remove(POD_TEMPLATE_HASH);
            t
        };
        strip(self) == strip(other)
    }
}

/// Checks a controller's selector and template: both present, the
/// template's labels selected by the selector, the pod spec valid, and a
/// restart policy of `Always` (a controller keeps its pods running; Jobs
/// have their own rule).
pub fn validate_template(
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    always_restart: bool,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        errors.push(fe(
            "spec.selector",
            "required: the labels of the pods this object owns, e.g. matchLabels: {app: web}",
        ));
    }
    for (k, v) in &selector.match_labels {
        if !is_label_key(k) || !is_label_value(v) {
            errors.push(fe(
                format!("spec.selector.matchLabels.{k}"),
                "not a valid label key and value",
            ));
        }
    }
    if !selector.matches(&template.metadata.labels) {
        errors.push(fe(
            "spec.template.metadata.labels",
            "do not match spec.selector: the pods made from the template must be selected \
             by it (give the template the selector's labels)",
        ));
    }
    if always_restart && template.spec.restart_policy != RestartPolicy::Always {
        errors.push(fe(
            "spec.template.spec.restartPolicy",
            format!(
                "{:?}: only Always is allowed here (the controller keeps its pods running; \
                 use a Job for programs that end)",
                template.spec.restart_policy
            ),
        ));
    }
    errors.extend(validate_pod_template(template));
    errors
}

/// Checks a pod template on its own: its labels and annotations, that it
/// leaves placement to the scheduler, and its pod spec. Paths start at
/// `spec.template`.
pub fn validate_pod_template(template: &PodTemplateSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (k, v) in &template.metadata.labels {
        if !is_label_key(k) || !is_label_value(v) {
            errors.push(fe(
                format!("spec.template.metadata.labels.{k}"),
                "not a valid label key and value",
            ));
        }
    }
    for k in template.metadata.annotations.keys() {
        if !is_label_key(k) {
            errors.push(fe(
                format!("spec.template.metadata.annotations.{k}"),
                "not a valid annotation key",
            ));
        }
    }
    if template.spec.node_name.is_some() {
        errors.push(fe(
            "spec.template.spec.nodeName",
            "set by the scheduler for each pod; use nodeSelector or affinity to choose nodes",
        ));
    }
    let spec_errors = validate_spec(&template.spec)
        .into_iter()
        .chain(validate_placement(
            &template.spec.tolerations,
            template.spec.affinity.as_ref(),
            &template.spec.topology_spread_constraints,
        ));
    errors.extend(spec_errors.map(|e| FieldError {
        path: format!("spec.template.{}", e.path),
        message: e.message,
    }));
    errors
}

/// A count given as a number (`1`) or a percentage of another (`25%`), as
/// a Deployment's maxSurge and maxUnavailable are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(u32),
    Str(String),
}

impl Default for IntOrPercent {
    fn default() -> Self {
        IntOrPercent::Int(0)
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Str(s) => f.write_str(s),
        }
    }
}

impl IntOrPercent {
    /// The count out of `total`: a percentage rounded up or down as asked
    /// (Kubernetes rounds maxSurge up and maxUnavailable down). An error
    /// says what is wrong with the text.
    pub fn scaled(&self, total: u32, round_up: bool) -> Result<u32, String> {
        match self {
            IntOrPercent::Int(n) => Ok(*n),
            IntOrPercent::Str(s) => {
                let pct = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<u32>().ok())
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| {
                        format!("{s:?} is neither a number nor a percentage from 0% to 100%")
                    })?;
                let product = u64::from(total) * u64::from(pct);
                let n = if round_up {
                    product.div_ceil(100)
                } else {
                    product / 100
                };
                Ok(u32::try_from(n).unwrap_or(u32::MAX))
            }
        }
    }
}

/// True, False or Unknown, as Kubernetes conditions say.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// A condition of a workload's status.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type", skip_serializing_if = "crate::is_default")]
    pub type_: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: ConditionStatus,
    /// When the controller last saw the condition hold (progress, for Progressing).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_update_time: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_transition_time: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub reason: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub message: String,
}

/// The condition of `type_` among `conditions`.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets a condition: its transition time moves only when its status does.
pub fn set_condition(conditions: &mut Vec<Condition>, mut c: Condition) {
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            if x.status == c.status {
                c.last_transition_time = x.last_transition_time.or(c.last_transition_time);
            }
            *x = c;
        }
        None => conditions.push(c),
    }
}

/// Whether a selector selects nothing it must not change after creation:
/// the selector of a Deployment or ReplicaSet is fixed once made (its pods
/// would otherwise be orphaned or stolen).
pub fn selector_unchanged(stored: &LabelSelector, incoming: &LabelSelector) -> Result<(), String> {
    if stored == incoming {
        Ok(())
    } else {
        Err(
            "spec.selector may not change once created; delete and create the object again \
             to select other pods"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kubernetes_rounds() {
        let p = |s: &str| IntOrPercent::Str(s.into());
        // (value, total, round up, expected)
        let cases = [
            (p("25%"), 10, true, 3),
            (p("25%"), 10, false, 2),
            (p("25%"), 4, true, 1),
            (p("25%"), 3, false, 0),
            (p("0%"), 7, true, 0),
            (p("100%"), 7, false, 7),
            (p("1%"), 1, true, 1),
            (IntOrPercent::Int(2), 100, false, 2),
        ];
        for (v, total, up, want) in cases {
            assert_eq!(v.scaled(total, up), Ok(want), "{v} of {total}, up={up}");
        }
        assert!(p("x%").scaled(10, true).is_err());
        assert!(p("101%").scaled(10, true).is_err());
        assert!(p("10").scaled(10, true).is_err());
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let mut cs = Vec::new();
        let c = |status, t| Condition {
            type_: "Available".into(),
            status,
            last_update_time: Some(Time(t)),
            last_transition_time: Some(Time(t)),
            ..Condition::default()
        };
        set_condition(&mut cs, c(ConditionStatus::True, 1));
        set_condition(&mut cs, c(ConditionStatus::True, 5));
        assert_eq!(cs[0].last_transition_time, Some(Time(1)));
        assert_eq!(cs[0].last_update_time, Some(Time(5)));
        set_condition(&mut cs, c(ConditionStatus::False, 9));
        assert_eq!(cs[0].last_transition_time, Some(Time(9)));
        assert_eq!(cs.len(), 1);
    }
}
