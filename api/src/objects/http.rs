//! How an http pod serves (`spec.http`) and how its health is checked
//! (`readinessProbe`, `livenessProbe`, `startupProbe`).
//!
//! An http pod runs a component that exports `wasi:http/incoming-handler`:
//! the node keeps it pre-instantiated and gives every request a fresh
//! instance. `spec.http` bounds what its requests may take together.

use crate::manifest::{fe, FieldError};
use crate::quantity::{parse_bytes, Quantity};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Requests an http pod serves at once when `concurrency` is left out.
pub const DEFAULT_CONCURRENCY: u32 = 64;
/// A request's time when `timeoutSeconds` is left out.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 30;
/// The most `concurrency` may be: each request holds an instance.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// The longest `timeoutSeconds` may be (one hour).
pub const MAX_TIMEOUT_SECONDS: u32 = 3_600;

/// `spec.http`: limits on an http pod's requests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpOptions {
    /// Requests served at once; one more is answered 503 at once
    /// (default 64).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub concurrency: Option<u32>,
    /// How long a request may take, from its arrival to the end of its
    /// response body; past it the request ends, with 504 if no response
    /// had started (default 30).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub timeout_seconds: Option<u32>,
    /// Memory one request's instance may use (default: the pod's memory
    /// limit). All the pod's requests together stay within
    /// `resources.limits.memory`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub request_memory: Option<Quantity>,
}

impl HttpOptions {
    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        ))
    }
}

/// A health check of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Probe {
    /// An HTTP GET to the pod (http pods only): a status from 200 to 399
    /// within `timeoutSeconds` is a success.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub http_get: Option<HttpGetAction>,
    /// Seconds after the program starts before the first check (default 0).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub initial_delay_seconds: Option<u32>,
    /// Seconds between checks (default 10).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub period_seconds: Option<u32>,
    /// Seconds a check may take (default 1).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub timeout_seconds: Option<u32>,
    /// Successes in a row after failing that count as healthy again
    /// (default 1).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub success_threshold: Option<u32>,
    /// Failures in a row that count as unhealthy (default 3).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub failure_threshold: Option<u32>,
}

/// What an HTTP probe asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpGetAction {
    /// The path and query, starting with `/` (default `/`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub path: String,
}

impl Probe {
    pub fn initial_delay(&self) -> Duration {
        Duration::from_secs(u64::from(self.initial_delay_seconds.unwrap_or(0)))
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs(u64::from(self.period_seconds.unwrap_or(10).max(1)))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.timeout_seconds.unwrap_or(1).max(1)))
    }

    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.unwrap_or(1).max(1)
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3).max(1)
    }

    /// The path an HTTP probe asks for.
    pub fn path(&self) -> &str {
        match self.http_get.as_ref().map(|h| h.path.as_str()) {
            Some(p) if !p.is_empty() => p,
            _ => "/",
        }
    }
}

/// Checks `spec.http`.
pub fn validate_http(h: &HttpOptions) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(c) = h.concurrency {
        if c == 0 || c > MAX_CONCURRENCY {
            errors.push(fe(
                "spec.http.concurrency",
                format!("{c}: give 1 to {MAX_CONCURRENCY} requests at once"),
            ));
        }
    }
    if let Some(t) = h.timeout_seconds {
        if t == 0 || t > MAX_TIMEOUT_SECONDS {
            errors.push(fe(
                "spec.http.timeoutSeconds",
                format!("{t}: give 1 to {MAX_TIMEOUT_SECONDS} seconds"),
            ));
        }
    }
    if let Some(q) = &h.request_memory {
        match parse_bytes(&q.0) {
            Ok(0) => errors.push(fe("spec.http.requestMemory", "must be more than 0")),
            Ok(_) => {}
            Err(e) => errors.push(fe("spec.http.requestMemory", e.to_string())),
        }
    }
    errors
}

/// Checks one probe at `at` (`spec.readinessProbe`, ...).
pub fn validate_probe(at: &str, p: &Probe) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match &p.http_get {
        None => errors.push(fe(
            at,
            "give httpGet: {path: /healthz} (a probe asks the pod over HTTP; \
             a command pod's only health is that it runs)",
        )),
        Some(h) if !h.path.is_empty() && !h.path.starts_with('/') => errors.push(fe(
            format!("{at}.httpGet.path"),
            format!("{:?} must start with /", h.path),
        )),
        Some(h) if h.path.len() > 2048 || h.path.chars().any(|c| c.is_control() || c == ' ') => {
            errors.push(fe(
                format!("{at}.httpGet.path"),
                "at most 2048 characters, without spaces or control characters",
            ))
        }
        Some(_) => {}
    }
    for (field, value, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if let Some(v) = value {
            if v < min || v > MAX_TIMEOUT_SECONDS {
                errors.push(fe(
                    format!("{at}.{field}"),
                    format!("{v}: give {min} to {MAX_TIMEOUT_SECONDS}"),
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let h = HttpOptions::default();
        assert_eq!(h.concurrency(), DEFAULT_CONCURRENCY);
        assert_eq!(h.timeout(), Duration::from_secs(30));
        assert!(validate_http(&h).is_empty());
        let bad = HttpOptions {
            concurrency: Some(0),
            timeout_seconds: Some(0),
            request_memory: Some(Quantity::new("lots")),
        };
        let fields: Vec<_> = validate_http(&bad).into_iter().map(|e| e.path).collect();
        assert_eq!(
            fields,
            [
                "spec.http.concurrency",
                "spec.http.timeoutSeconds",
                "spec.http.requestMemory"
            ]
        );
    }

    #[test]
    fn probes_need_a_path_that_starts_with_a_slash() {
        let ok = Probe {
            http_get: Some(HttpGetAction {
                path: "/healthz".into(),
            }),
            ..Probe::default()
        };
        assert!(validate_probe("spec.readinessProbe", &ok).is_empty());
        assert_eq!(ok.path(), "/healthz");
        assert_eq!(ok.failure_threshold(), 3);
        let none = Probe::default();
        assert_eq!(
            validate_probe("spec.livenessProbe", &none)[0].path,
            "spec.livenessProbe"
        );
        let relative = Probe {
            http_get: Some(HttpGetAction {
                path: "healthz".into(),
            }),
            period_seconds: Some(0),
            ..Probe::default()
        };
        let fields: Vec<_> = validate_probe("spec.startupProbe", &relative)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.startupProbe.httpGet.path",
                "spec.startupProbe.periodSeconds"
            ]
        );
    }
}
