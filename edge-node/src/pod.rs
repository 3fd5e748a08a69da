//! The life of one pod on a node, as an explicit state machine: a pure
//! function of (state, event, now) returning what the worker must do next.
//! The worker (see [`crate::worker`]) performs the actions and feeds back
//! events; nothing here sleeps, reads clocks or touches the runtime, so every
//! transition is tested as data.

use flotilla_api::objects::{PodPhase, PodStatus, RestartPolicy};
use flotilla_api::time::Time;
use std::time::Duration;

/// First delay before restarting a pod that ended and must run again.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The delay doubles up to this (Kubernetes caps CrashLoopBackOff at 5 minutes too).
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A run this long counts as healthy and resets the back-off.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// Where the pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Getting the module (local cache or master) and compiling it.
    Preparing,
    /// Waiting to retry preparing after a failure.
    PrepareBackOff {
        until: Time,
        reason: String,
        message: String,
    },
    /// An instance is running.
    Running { since: Time },
    /// Waiting to start the next instance.
    CrashBackOff { until: Time },
    /// Ended for good.
    Completed { phase: PodPhase },
    /// Stopped because the pod was deleted or moved away.
    Stopped,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    /// Empty for a plain exit; `OOMKilled`, `Trap`, `StartError` otherwise.
    pub reason: String,
    pub message: String,
    pub at: Time,
}

/// The exit code a run that ended without one of its own reports, by how
/// it ended: the codes a shell gives a process ended by a signal (128 + N),
/// as wasmtime's command line reports a trap (134, SIGABRT) and the kubelet
/// a container killed for its memory or its liveness probe (137, SIGKILL)
/// or one that could not start (128).
pub fn exit_code_of(reason: &str) -> Option<i32> {
    match reason {
        "Trap" => Some(134),
        "OOMKilled" | "Unhealthy" => Some(137),
        "StartError" => Some(128),
        _ => None,
    }
}

impl Exit {
    fn success(&self) -> bool {
        self.code == Some(0) && self.reason.is_empty()
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The module is compiled and ready to start.
    Prepared,
    /// The module or what the pod reads (its ConfigMaps and Secrets) is
    /// not there yet: the pod waits, Pending, showing `reason` (empty:
    /// `ModuleBackOff`), and preparing is tried again after a back-off.
    PrepareFailed {
        reason: String,
        message: String,
    },
    /// The module cannot be compiled (not valid Wasm, or not something this
    /// engine runs: reason `InvalidModule`), or not within the node's compile
    /// limits (`CompileLimit`). Its digest names the same bytes forever, so
    /// no retry can help.
    ModuleInvalid {
        reason: String,
        message: String,
    },
    /// An instance started.
    Started,
    Exited(Exit),
    /// A back-off delay is over.
    BackOffElapsed,
    /// The pod is no longer wanted here.
    Stop,
}

/// What the worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Prepare,
    Start,
    /// Deliver `BackOffElapsed` after this long.
    Wait(Duration),
    /// Send the current status to the master.
    Report,
    /// Stop the running instance and end the worker.
    Kill,
}

/// One pod's state plus what the status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMachine {
    pub state: State,
    pub policy: RestartPolicy,
    pub restart_count: u32,
    /// The delay the next back-off will use.
    pub next_backoff: Duration,
    pub last_exit: Option<Exit>,
    pub start_time: Option<Time>,
    /// Set while in back-off: the delay used, for the status message.
    pub current_backoff: Duration,
    /// The pod ran before this machine existed (the node agent restarted):
    /// its next start is a restart and counts as one.
    pub ran_before: bool,
    /// The last run that was followed by a restart: when it started, and
    /// how it ended (the status's `lastState`).
    pub restarted_run: Option<(Option<Time>, Exit)>,
}

impl PodMachine {
    /// A pod about to be prepared; `restart_count` carries over from a status
    /// the node persisted before a reboot.
    pub fn new(policy: RestartPolicy, restart_count: u32) -> (PodMachine, Vec<Action>) {
        let m = PodMachine {
            state: State::Preparing,
            policy,
            restart_count,
            next_backoff: BACKOFF_INITIAL,
            last_exit: None,
            start_time: None,
            current_backoff: Duration::ZERO,
            ran_before: false,
            restarted_run: None,
        };
        (m, vec![Action::Report, Action::Prepare])
    }

    /// The machine for a pod given the status it last had (from the node's
    /// local store after an agent restart, or the master's copy): a pod that
    /// ended stays ended; a pod that ran before runs again, and that run
    /// counts as a restart, as Kubernetes counts a container the kubelet
    /// starts again after its own restart.
    pub fn resume(policy: RestartPolicy, status: &PodStatus) -> (PodMachine, Vec<Action>) {
        if status.phase.is_terminal() {
            return (PodMachine::completed(policy, status), vec![]);
        }
        let (mut m, actions) = PodMachine::new(policy, status.restart_count);
        m.start_time = status.start_time;
        m.ran_before = status.start_time.is_some();
        m.restarted_run = restarted_run_of(status);
        (m, actions)
    }

    /// A pod that already ended before (restored after a node restart): it stays ended.
    pub fn completed(policy: RestartPolicy, status: &PodStatus) -> PodMachine {
        PodMachine {
            state: State::Completed {
                phase: status.phase,
            },
            policy,
            restart_count: status.restart_count,
            next_backoff: BACKOFF_INITIAL,
            last_exit: Some(Exit {
                code: status.exit_code,
                reason: status.reason.clone(),
                message: status.message.clone(),
                at: status.finish_time.unwrap_or_default(),
            }),
            start_time: status.start_time,
            current_backoff: Duration::ZERO,
            ran_before: false,
            restarted_run: restarted_run_of(status),
        }
    }

    fn wants_restart(&self, exit: &Exit) -> bool {
        match self.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        }
    }

    fn backoff(&mut self, now: Time) -> Duration {
        let d = self.next_backoff;
        self.next_backoff = (d * 2).min(BACKOFF_MAX);
        self.current_backoff = d;
        let _ = now;
        d
    }

    /// Applies an event; returns the actions to perform, in order.
    pub fn step(&mut self, event: Event, now: Time) -> Vec<Action> {
        use Action::*;
        match (&self.state, event) {
            (State::Stopped, _) => vec![],
            (_, Event::Stop) => {
                self.state = State::Stopped;
                vec![Kill]
            }
            (State::Preparing, Event::Prepared) => {
                if std::mem::take(&mut self.ran_before) {
                    self.restart_count = self.restart_count.saturating_add(1);
                }
                vec![Start]
            }
            (State::Preparing, Event::ModuleInvalid { reason, message }) => {
                self.last_exit = Some(Exit {
                    code: None,
                    reason,
                    message,
                    at: now,
                });
                self.state = State::Completed {
                    phase: PodPhase::Failed,
                };
                vec![Report]
            }
            (State::Preparing, Event::PrepareFailed { reason, message }) => {
                let d = self.backoff(now);
                self.state = State::PrepareBackOff {
                    until: add(now, d),
                    reason,
                    message,
                };
                vec![Report, Wait(d)]
            }
            (State::PrepareBackOff { .. }, Event::BackOffElapsed) => {
                self.state = State::Preparing;
                vec![Prepare]
            }
            (State::Preparing, Event::Started) | (State::CrashBackOff { .. }, Event::Started) => {
                self.state = State::Running { since: now };
                self.start_time.get_or_insert(now);
                vec![Report]
            }
            (State::Running { since }, Event::Exited(exit)) => {
                let since = *since;
                if now.since(since) >= BACKOFF_RESET_AFTER.as_millis() as i64 {
                    self.next_backoff = BACKOFF_INITIAL;
                }
                self.finish(Some(since), exit, now)
            }
            // An instance that failed to start ends like one that exited at once.
            (State::Preparing, Event::Exited(exit))
            | (State::CrashBackOff { .. }, Event::Exited(exit)) => self.finish(None, exit, now),
            (State::CrashBackOff { .. }, Event::BackOffElapsed) => {
                self.restart_count = self.restart_count.saturating_add(1);
                vec![Start]
            }
            // Anything else is a stale event (e.g. a timer racing a stop); ignore it.
            (
                State::Preparing
                | State::PrepareBackOff { .. }
                | State::Running { .. }
                | State::CrashBackOff { .. }
                | State::Completed { .. },
                Event::Prepared
                | Event::PrepareFailed { .. }
                | Event::ModuleInvalid { .. }
                | Event::Started
                | Event::Exited(_)
                | Event::BackOffElapsed,
            ) => vec![],
        }
    }

    fn finish(&mut self, started: Option<Time>, exit: Exit, now: Time) -> Vec<Action> {
        let restart = self.wants_restart(&exit);
        let success = exit.success();
        if restart {
            self.restarted_run = Some((started, exit.clone()));
        }
        self.last_exit = Some(exit);
        if restart {
            let d = self.backoff(now);
            self.state = State::CrashBackOff { until: add(now, d) };
            vec![Action::Report, Action::Wait(d)]
        } else {
            self.state = State::Completed {
                phase: if success {
                    PodPhase::Succeeded
                } else {
                    PodPhase::Failed
                },
            };
            vec![Action::Report]
        }
    }

    /// The status to report for the current state.
    pub fn status(&self) -> PodStatus {
        let mut s = PodStatus {
            restart_count: self.restart_count,
            start_time: self.start_time,
            exit_code: self.last_exit.as_ref().and_then(|e| e.code),
            last_state: self.restarted_run.as_ref().map(|(started, e)| {
                flotilla_api::objects::LastState {
                    exit_code: e.code,
                    reason: e.reason.clone(),
                    message: e.message.clone(),
                    started_at: *started,
                    finished_at: Some(e.at),
                }
            }),
            ..PodStatus::default()
        };
        let exit_desc = |e: &Exit| match (&e.code, e.reason.as_str()) {
            (_, r) if !r.is_empty() => format!("{r}: {}", e.message),
            (Some(c), _) => format!("exit code {c}"),
            (None, _) => "ended".to_string(),
        };
        match &self.state {
            State::Preparing => {
                s.phase = PodPhase::Pending;
                s.reason = "Preparing".into();
                s.message = "fetching and compiling the module".into();
            }
            State::PrepareBackOff {
                reason, message, ..
            } => {
                s.phase = PodPhase::Pending;
                s.reason = if reason.is_empty() {
                    "ModuleBackOff".into()
                } else {
                    reason.clone()
                };
                s.message = format!(
                    "back-off {}s before retrying: {message}",
                    self.current_backoff.as_secs()
                );
            }
            State::Running { .. } => {
                s.phase = PodPhase::Running;
            }
            State::CrashBackOff { .. } => {
                s.phase = PodPhase::Running;
                s.reason = "CrashLoopBackOff".into();
                let last = self.last_exit.as_ref().map(exit_desc).unwrap_or_default();
                s.message = format!(
                    "back-off {}s restarting pod (last run: {last})",
                    self.current_backoff.as_secs()
                );
            }
            State::Completed { phase } => {
                s.phase = *phase;
                if let Some(e) = &self.last_exit {
                    s.finish_time = Some(e.at);
                    if *phase == PodPhase::Succeeded {
                        s.reason = "Completed".into();
                    } else {
                        s.reason = if e.reason.is_empty() {
                            "Error".into()
                        } else {
                            e.reason.clone()
                        };
                        s.message = if e.reason.is_empty() {
                            exit_desc(e)
                        } else {
                            e.message.clone()
                        };
                    }
                }
            }
            State::Stopped => {
                s.phase = PodPhase::Failed;
                s.reason = "Stopped".into();
                s.message = "stopped by the node: the pod is no longer bound here".into();
            }
        }
        s
    }
}

/// The run a status says was last followed by a restart.
fn restarted_run_of(status: &PodStatus) -> Option<(Option<Time>, Exit)> {
    status.last_state.as_ref().map(|l| {
        (
            l.started_at,
            Exit {
                code: l.exit_code,
                reason: l.reason.clone(),
                message: l.message.clone(),
                at: l.finished_at.unwrap_or_default(),
            },
        )
    })
}

fn add(t: Time, d: Duration) -> Time {
    Time(t.0.saturating_add(d.as_millis() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn exit(code: i32) -> Event {
        Event::Exited(Exit {
            code: Some(code),
            reason: String::new(),
            message: String::new(),
            at: Time(0),
        })
    }

    fn oom() -> Event {
        Event::Exited(Exit {
            code: None,
            reason: "OOMKilled".into(),
            message: "memory limit of 32Mi exceeded".into(),
            at: Time(0),
        })
    }

    /// Runs a script of (event, expected actions, expected phase, expected reason).
    fn script(policy: RestartPolicy, steps: &[(Event, Vec<Action>, PodPhase, &str)]) -> PodMachine {
        let (mut m, first) = PodMachine::new(policy, 0);
        assert_eq!(first, vec![Report, Prepare]);
        for (i, (ev, actions, phase, reason)) in steps.iter().enumerate() {
            let got = m.step(ev.clone(), Time(i as i64 * 1000));
            assert_eq!(&got, actions, "step {i} {ev:?}");
            let st = m.status();
            assert_eq!(
                (st.phase, st.reason.as_str()),
                (*phase, *reason),
                "step {i} {ev:?}"
            );
        }
        m
    }

    #[test]
    fn never_runs_once() {
        script(
            RestartPolicy::Never,
            &[
                (Event::Prepared, vec![Start], PodPhase::Pending, "Preparing"),
                (Event::Started, vec![Report], PodPhase::Running, ""),
                (exit(0), vec![Report], PodPhase::Succeeded, "Completed"),
                (
                    Event::BackOffElapsed,
                    vec![],
                    PodPhase::Succeeded,
                    "Completed",
                ),
            ],
        );
        let m = script(
            RestartPolicy::Never,
            &[
                (Event::Prepared, vec![Start], PodPhase::Pending, "Preparing"),
                (Event::Started, vec![Report], PodPhase::Running, ""),
                (oom(), vec![Report], PodPhase::Failed, "OOMKilled"),
            ],
        );
        assert!(m.status().message.contains("memory limit"));
    }

    #[test]
    fn on_failure_backs_off_exponentially() {
        let mut steps = vec![(Event::Prepared, vec![Start], PodPhase::Pending, "Preparing")];
        let mut delay = BACKOFF_INITIAL;
        for _ in 0..5 {
            steps.push((Event::Started, vec![Report], PodPhase::Running, ""));
            steps.push((
                exit(1),
                vec![Report, Wait(delay)],
                PodPhase::Running,
                "CrashLoopBackOff",
            ));
            steps.push((
                Event::BackOffElapsed,
                vec![Start],
                PodPhase::Running,
                "CrashLoopBackOff",
            ));
            delay *= 2;
        }
        steps.push((Event::Started, vec![Report], PodPhase::Running, ""));
        steps.push((exit(0), vec![Report], PodPhase::Succeeded, "Completed"));
        let m = script(RestartPolicy::OnFailure, &steps);
        assert_eq!(m.restart_count, 5);
    }

    #[test]
    fn backoff_is_capped_and_reset_after_a_long_run() {
        let (mut m, _) = PodMachine::new(RestartPolicy::Always, 0);
        m.step(Event::Prepared, Time(0));
        let mut last = Duration::ZERO;
        for i in 0..20 {
            m.step(Event::Started, Time(i));
            if let [Report, Wait(d)] = m.step(exit(0), Time(i)).as_slice() {
                last = *d;
            }
            m.step(Event::BackOffElapsed, Time(i));
        }
        assert_eq!(last, BACKOFF_MAX);
        m.step(Event::Started, Time(0));
        let long = BACKOFF_RESET_AFTER.as_millis() as i64 + 1;
        assert_eq!(
            m.step(exit(0), Time(long)),
            vec![Report, Wait(BACKOFF_INITIAL)]
        );
    }

    #[test]
    fn prepare_failures_retry() {
        script(
            RestartPolicy::Never,
            &[
                (
                    Event::PrepareFailed {
                        reason: String::new(),
                        message: "master unreachable".into(),
                    },
                    vec![Report, Wait(BACKOFF_INITIAL)],
                    PodPhase::Pending,
                    "ModuleBackOff",
                ),
                (
                    Event::BackOffElapsed,
                    vec![Prepare],
                    PodPhase::Pending,
                    "Preparing",
                ),
                (Event::Prepared, vec![Start], PodPhase::Pending, "Preparing"),
            ],
        );
    }

    #[test]
    fn stop_kills_from_any_state_and_is_final() {
        for policy in [RestartPolicy::Always, RestartPolicy::Never] {
            let (mut m, _) = PodMachine::new(policy, 0);
            m.step(Event::Prepared, Time(0));
            m.step(Event::Started, Time(0));
            assert_eq!(m.step(Event::Stop, Time(1)), vec![Kill]);
            assert_eq!(m.step(exit(1), Time(2)), vec![]);
            assert_eq!(m.state, State::Stopped);
        }
    }

    #[test]
    fn start_errors_count_as_failures() {
        let (mut m, _) = PodMachine::new(RestartPolicy::OnFailure, 2);
        m.step(Event::Prepared, Time(0));
        let start_err = Event::Exited(Exit {
            code: None,
            reason: "StartError".into(),
            message: "missing import".into(),
            at: Time(0),
        });
        assert_eq!(
            m.step(start_err, Time(0)),
            vec![Report, Wait(BACKOFF_INITIAL)]
        );
        assert_eq!(m.status().restart_count, 2);
    }

    #[test]
    fn restored_completed_pods_stay_completed() {
        let st = PodStatus {
            phase: PodPhase::Succeeded,
            restart_count: 3,
            exit_code: Some(0),
            ..PodStatus::default()
        };
        let mut m = PodMachine::completed(RestartPolicy::Never, &st);
        assert_eq!(m.step(Event::BackOffElapsed, Time(0)), vec![]);
        assert_eq!(m.status().phase, PodPhase::Succeeded);
        assert_eq!(m.status().restart_count, 3);
    }

    #[test]
    fn invalid_modules_fail_the_pod_whatever_the_policy() {
        for policy in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            let (mut m, _) = PodMachine::new(policy, 0);
            let invalid = Event::ModuleInvalid {
                reason: "InvalidModule".into(),
                message: "invalid input WebAssembly code at offset 8".into(),
            };
            assert_eq!(m.step(invalid, Time(5)), vec![Report], "{policy:?}");
            let st = m.status();
            assert_eq!(
                (st.phase, st.reason.as_str(), st.message.as_str()),
                (
                    PodPhase::Failed,
                    "InvalidModule",
                    "invalid input WebAssembly code at offset 8"
                ),
                "{policy:?}"
            );
            assert_eq!(st.finish_time, Some(Time(5)));
            // Nothing brings it back: no back-off, no retry.
            assert_eq!(m.step(Event::BackOffElapsed, Time(6)), vec![]);
            assert_eq!(m.step(Event::Prepared, Time(7)), vec![]);
            assert_eq!(m.status().phase, PodPhase::Failed);
        }
    }

    #[test]
    fn resumed_pods_count_the_run_after_an_agent_restart() {
        let status = |phase, start_time| PodStatus {
            phase,
            restart_count: 2,
            start_time,
            ..PodStatus::default()
        };
        // (status the pod had, actions on resume, restart count once started again)
        let cases = [
            // It was running: running it again is a restart.
            (
                status(PodPhase::Running, Some(Time(100))),
                vec![Report, Prepare],
                Some(3),
            ),
            // It was waiting out a crash back-off: its next run was a restart anyway.
            (
                PodStatus {
                    reason: "CrashLoopBackOff".into(),
                    ..status(PodPhase::Running, Some(Time(100)))
                },
                vec![Report, Prepare],
                Some(3),
            ),
            // It never started (e.g. its module was still being fetched): the first run is no restart.
            (
                status(PodPhase::Pending, None),
                vec![Report, Prepare],
                Some(2),
            ),
            // It ended: it stays ended and does not run.
            (status(PodPhase::Succeeded, Some(Time(100))), vec![], None),
            (status(PodPhase::Failed, Some(Time(100))), vec![], None),
        ];
        for (st, want_actions, want_restarts) in cases {
            let (mut m, actions) = PodMachine::resume(RestartPolicy::Always, &st);
            assert_eq!(actions, want_actions, "{st:?}");
            assert_eq!(m.status().restart_count, 2, "nothing counted yet: {st:?}");
            let Some(want) = want_restarts else {
                assert_eq!(m.step(Event::Prepared, Time(200)), vec![], "{st:?}");
                assert_eq!(m.status().phase, st.phase);
                continue;
            };
            assert_eq!(m.step(Event::Prepared, Time(200)), vec![Start], "{st:?}");
            assert_eq!(m.step(Event::Started, Time(200)), vec![Report], "{st:?}");
            let now = m.status();
            assert_eq!(now.restart_count, want, "{st:?}");
            assert_eq!(now.phase, PodPhase::Running);
            assert_eq!(now.start_time, st.start_time.or(Some(Time(200))));
            // Counted once: a crash later restarts through the back-off as usual.
            m.step(exit(1), Time(300));
            m.step(Event::BackOffElapsed, Time(2000));
            assert_eq!(m.status().restart_count, want + 1, "{st:?}");
        }
    }
}
