//! Event: something that happened to an object, as the scheduler, the
//! controllers and the nodes saw it ("Scheduled", "BackOff", "OOMKilled",
//! "SuccessfulCreate", ...). The same happening again raises `count` and
//! `lastTimestamp` of one Event rather than making another; Events are
//! kept for a bounded time and number (the master's `--event-ttl` and
//! `--max-events`), and written in batches.

use super::{merge_meta, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest message kept; longer ones are cut (with "...").
pub const MAX_MESSAGE: usize = 1024;

/// A happening, and how often it happened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Event {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    /// The object it happened to.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub involved_object: ObjectReference,
    /// A short CamelCase word for what happened (`BackOff`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub reason: String,
    /// What happened, for people.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub message: String,
    #[serde(rename = "type", skip_serializing_if = "crate::is_default")]
    pub type_: EventType,
    /// How many times it happened.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub count: u32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub first_timestamp: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_timestamp: Option<Time>,
    /// Who saw it.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub source: EventSource,
}

/// The object an Event is about.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ObjectReference {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub kind: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub namespace: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub uid: String,
}

impl ObjectReference {
    /// A reference to the object with this kind and metadata.
    pub fn to(kind: super::Kind, m: &ObjectMeta) -> ObjectReference {
        ObjectReference {
            kind: kind.as_str().to_string(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
        }
    }

    /// `kind/name`, lowercase, as `get events` shows it.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.kind.to_lowercase(), self.name)
    }
}

/// Who saw an Event: a master component, or a node.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EventSource {
    /// `scheduler`, `replicaset-controller`, `node`, ...
    #[serde(skip_serializing_if = "crate::is_default")]
    pub component: String,
    /// The node, for what a node reported.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub host: String,
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.is_empty() {
            f.write_str(&self.component)
        } else {
            write!(f, "{}, {}", self.component, self.host)
        }
    }
}

/// Normal, or Warning for what someone may have to act on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum EventType {
    #[default]
    Normal,
    Warning,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        })
    }
}

impl Event {
    /// `message` cut to [`MAX_MESSAGE`] bytes (at a character boundary).
    pub fn cut(message: &str) -> String {
        if message.len() <= MAX_MESSAGE {
            return message.to_string();
        }
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &message[..end])
    }
}

impl Resource for Event {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.reason.is_empty() {
            errors.push(fe("reason", "required: a short CamelCase word"));
        }
        if self.involved_object.name.is_empty() || self.involved_object.kind.is_empty() {
            errors.push(fe(
                "involvedObject",
                "required: the kind and name of the object it happened to",
            ));
        }
        if self.message.len() > MAX_MESSAGE {
            errors.push(fe("message", format!("at most {MAX_MESSAGE} bytes")));
        }
        errors
    }

    /// An Event has no spec or status of its own: an update replaces it
    /// whole but for its identity.
    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if status_only {
            return Err("an Event has no status; update it whole".into());
        }
        let mut out = incoming;
        let meta = std::mem::take(&mut out.metadata);
        let mut old_body = stored.clone();
        old_body.metadata = ObjectMeta::default();
        let changed = old_body != out;
        out.metadata = merge_meta(&stored.metadata, meta, changed);
        Ok(out)
    }
}
