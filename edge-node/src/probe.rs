//! Health probes of http pods: startup, liveness and readiness, as in
//! Kubernetes. Each asks the pod in-process (`GET path`, 200–399 within the
//! timeout is a success) every period.
//!
//! [`Counter`] is the pure part: consecutive successes and failures
//! against the thresholds. [`Probes`] is the schedule the worker drives:
//! the startup probe first (the others wait for it), then liveness and
//! readiness side by side. A failed startup or liveness probe restarts the
//! program; readiness decides whether the pod gets traffic.

use crate::runtime::http::HttpPod;
use flotilla_api::objects::http::Probe;
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;

/// Consecutive results of one probe against its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    successes: u32,
    failures: u32,
    success_threshold: u32,
    failure_threshold: u32,
    /// The verdict so far: None until a threshold is first reached.
    pub healthy: Option<bool>,
}

impl Counter {
    pub fn new(probe: &Probe) -> Counter {
        Counter {
            successes: 0,
            failures: 0,
            success_threshold: probe.success_threshold(),
            failure_threshold: probe.failure_threshold(),
            healthy: None,
        }
    }

    /// Counts one result; returns the verdict when it changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        // A first success makes a pod ready whatever the threshold (as in
        // Kubernetes, where successThreshold counts after a failure).
        let verdict = if ok && (self.successes >= self.success_threshold || self.healthy.is_none())
        {
            Some(true)
        } else if !ok && self.failures >= self.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.healthy != Some(v) => {
                self.healthy = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// What the probes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod is to get traffic, or not, with why not.
    Ready(bool, String),
    /// The program is to be restarted: why.
    Restart(String),
}

/// The probes of one run of an http pod.
#[derive(Debug)]
pub struct Probes {
    startup: Option<(Probe, Counter)>,
    liveness: Option<(Probe, Counter)>,
    readiness: Option<(Probe, Counter)>,
    started: bool,
    next: [Option<Instant>; 3],
}

impl Probes {
    /// The probes of a pod spec, starting now (each after its initial
    /// delay).
    pub fn new(
        startup: Option<&Probe>,
        liveness: Option<&Probe>,
        readiness: Option<&Probe>,
    ) -> Probes {
        let now = Instant::now();
        let at = |p: Option<&Probe>| p.map(|p| now + p.initial_delay());
        Probes {
            next: [at(startup), at(liveness), at(readiness)],
            startup: startup.map(|p| (p.clone(), Counter::new(p))),
            liveness: liveness.map(|p| (p.clone(), Counter::new(p))),
            readiness: readiness.map(|p| (p.clone(), Counter::new(p))),
            started: startup.is_none(),
        }
    }

    /// Runs the probes against `pod` until one says something.
    pub async fn next_verdict(&mut self, pod: &HttpPod) -> Verdict {
        loop {
            // The probes due: startup alone until it passes.
            let due: Vec<usize> = if self.started { vec![1, 2] } else { vec![0] };
            let Some(at) = due.iter().filter_map(|&i| self.next[i]).min() else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(at).await;
            for i in due {
                if self.next[i].is_none_or(|t| t > Instant::now()) {
                    continue;
                }
                let slot = match i {
                    0 => &mut self.startup,
                    1 => &mut self.liveness,
                    _ => &mut self.readiness,
                };
                let Some((probe, counter)) = slot else {
                    continue;
                };
                self.next[i] = Some(Instant::now() + probe.period());
                let result = check(pod, probe).await;
                let changed = counter.observe(result.is_ok());
                let why = result.err().unwrap_or_default();
                match (i, changed) {
                    (0, Some(true)) => self.started = true,
                    (0, Some(false)) => {
                        return Verdict::Restart(format!(
                            "startup probe failed {} times: {why}",
                            probe.failure_threshold()
                        ))
                    }
                    (1, Some(false)) => {
                        return Verdict::Restart(format!(
                            "liveness probe failed {} times: {why}",
                            probe.failure_threshold()
                        ))
                    }
                    (2, Some(ready)) => {
                        let why = if ready {
                            String::new()
                        } else {
                            format!("readiness probe failed: {why}")
                        };
                        return Verdict::Ready(ready, why);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// One probe request: Ok, or what was wrong.
async fn check(pod: &HttpPod, probe: &Probe) -> Result<(), String> {
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("http://localhost{}", probe.path()))
        .header("user-agent", "flotilla-probe")
        .body(
            Empty::<bytes::Bytes>::new()
                .map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
        );
    let request = request.map_err(|e| format!("bad probe path: {e}"))?;
    let answered = tokio::time::timeout(probe.timeout(), async {
        let response = pod.handle(request).await;
        let status = response.status();
        // Read the body, so the instance ends.
        let _ = response.into_body().collect().await;
        status
    })
    .await;
    match answered {
        Ok(s) if (200..400).contains(&s.as_u16()) => Ok(()),
        Ok(s) => Err(format!("GET {} answered {}", probe.path(), s.as_u16())),
        Err(_) => Err(format!(
            "GET {} timed out after {} s",
            probe.path(),
            probe.timeout().as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: u32, failure: u32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..Probe::default()
        }
    }

    #[test]
    fn verdicts_change_at_the_thresholds() {
        let mut c = Counter::new(&probe(2, 3));
        // The first success decides at once.
        assert_eq!(c.observe(true), Some(true));
        assert_eq!(c.observe(true), None);
        assert_eq!(c.observe(false), None);
        assert_eq!(c.observe(false), None);
        assert_eq!(c.observe(false), Some(false));
        assert_eq!(c.observe(false), None);
        // Back after two successes in a row.
        assert_eq!(c.observe(true), None);
        assert_eq!(c.observe(false), None);
        assert_eq!(c.observe(true), None);
        assert_eq!(c.observe(true), Some(true));
    }

    #[test]
    fn failing_from_the_start_is_unhealthy_at_the_threshold() {
        let mut c = Counter::new(&probe(1, 2));
        assert_eq!(c.observe(false), None);
        assert_eq!(c.observe(false), Some(false));
        assert_eq!(c.healthy, Some(false));
    }
}
