//! One worker per pod: performs the actions of the pod's state machine
//! ([`crate::pod`]) — fetch and compile the module, run it, wait out
//! back-offs, report status — and feeds the outcomes back as events.
//! It also closes the pod's log when the program has ended for good, so
//! `logs -f` ends with it.

use crate::local::LocalStore;
use crate::logs::LogBuffer;
use crate::pod::{Action, Event, Exit, PodMachine};
use crate::runtime::{LogSink, Program, RunOutcome, RunSpec, Runtime, RuntimeError};
use flotilla_api::net::{read_frame, Client};
use flotilla_api::objects::{condition, digest_of, PodCondition, PodPhase};
use flotilla_api::protocol::{Request, Response};
use flotilla_api::time::Time;
use flotilla_api::Pod;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What every worker shares.
pub struct WorkerCtx {
    pub runtime: Runtime,
    pub local: LocalStore,
    /// The current master connection, if any.
    pub client: watch::Receiver<Option<Client>>,
    /// Compiled programs by digest, so a warm pod skips even the disk cache.
    pub programs: Mutex<HashMap<String, Program>>,
    /// Status reports for the master (see `agent::report_loop`).
    pub reports: mpsc::UnboundedSender<Pod>,
}

/// A running worker.
pub struct WorkerHandle {
    pub uid: String,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    /// The pod as last reported (see [`WorkerHandle::report_again`]).
    last: Arc<Mutex<Pod>>,
}

impl WorkerHandle {
    /// Queues the pod's last reported status for the master again. Used when
    /// the master's copy no longer shows it: while this node was out of
    /// reach the master marked the pod `Unknown`, and only the node knows
    /// the real status.
    pub fn report_again(&self, reports: &mpsc::UnboundedSender<Pod>) {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let _ = reports.send(last.clone());
    }
}

/// Starts a worker for `pod`, logging into `logs`.
pub fn spawn(pod: Pod, ctx: Arc<WorkerCtx>, logs: Arc<LogBuffer>) -> WorkerHandle {
    let stop = CancellationToken::new();
    let uid = pod.metadata.uid.clone();
    // The buffer may have been closed by an earlier pod of the same name.
    logs.reopen();
    let last = Arc::new(Mutex::new(pod.clone()));
    let task = tokio::spawn(run(pod, ctx, logs, last.clone(), stop.clone()));
    WorkerHandle {
        uid,
        stop,
        task,
        last,
    }
}

async fn run(
    mut pod: Pod,
    ctx: Arc<WorkerCtx>,
    logs: Arc<LogBuffer>,
    last: Arc<Mutex<Pod>>,
    stop: CancellationToken,
) {
    let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
    let (mut machine, mut actions) = PodMachine::resume(pod.spec.restart_policy, &pod.status);
    let mut program: Option<Program> = None;
    let mut module_condition = pod.status.condition(condition::MODULE_READY).cloned();
    loop {
        let mut next = None;
        for a in actions.drain(..) {
            match a {
                Action::Report => {
                    report(&ctx, &last, &mut pod, &machine, module_condition.as_ref())
                }
                Action::Kill => {
                    tracing::info!(pod = %key, "stopped pod");
                    return;
                }
                a @ (Action::Prepare | Action::Start | Action::Wait(_)) => next = Some(a),
            }
        }
        let event = match next {
            None => {
                // Nothing left to do: the program ended for good. Followers of
                // its log get the end of the stream (unless this worker is
                // being replaced, and the buffer already belongs to the next).
                if !stop.is_cancelled() {
                    logs.end();
                }
                stop.cancelled().await;
                return;
            }
            Some(Action::Prepare) => tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                r = prepare(&ctx, &pod.spec.module) => match r {
                    Ok((p, message)) => {
                        program = Some(p);
                        module_condition = Some(PodCondition {
                            type_: condition::MODULE_READY.into(),
                            status: true,
                            last_transition_time: Some(Time::now()),
                            reason: "Compiled".into(),
                            message,
                        });
                        Event::Prepared
                    }
                    Err(PrepareError::Invalid(message)) => {
                        tracing::warn!(pod = %key, %message, "module cannot be compiled; the pod fails");
                        module_condition = Some(PodCondition {
                            type_: condition::MODULE_READY.into(),
                            status: false,
                            last_transition_time: Some(Time::now()),
                            reason: "InvalidModule".into(),
                            message: message.clone(),
                        });
                        Event::ModuleInvalid { message }
                    }
                    Err(PrepareError::Retry(message)) => {
                        tracing::warn!(pod = %key, %message, "module not ready");
                        Event::PrepareFailed { message }
                    }
                },
            },
            Some(Action::Wait(d)) => tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                _ = tokio::time::sleep(d) => Event::BackOffElapsed,
            },
            Some(Action::Start) => {
                let Some(p) = program.clone() else {
                    // Unreachable by the machine's rules (Start follows Prepared); fail the run rather than panic.
                    actions = machine.step(
                        exit_event("StartError", "no compiled module".into()),
                        Time::now(),
                    );
                    continue;
                };
                // Report Running before the guest starts, so short pods show the transition too.
                for a in machine.step(Event::Started, Time::now()) {
                    if a == Action::Report {
                        report(&ctx, &last, &mut pod, &machine, module_condition.as_ref());
                    }
                }
                tracing::info!(pod = %key, restarts = machine.restart_count, "started pod");
                let spec = RunSpec {
                    name: pod.metadata.name.clone(),
                    args: pod.spec.args.clone(),
                    env: pod
                        .spec
                        .env
                        .iter()
                        .map(|e| (e.name.clone(), e.value.clone()))
                        .collect(),
                    memory_limit: pod
                        .spec
                        .resources
                        .limits
                        .memory
                        .as_ref()
                        .and_then(|q| q.bytes().ok()),
                };
                let sink: Arc<dyn LogSink> = logs.clone();
                tokio::select! {
                    _ = stop.cancelled() => Event::Stop,
                    outcome = ctx.runtime.run(&p, spec, sink) => {
                        tracing::info!(pod = %key, ?outcome, "pod instance ended");
                        match outcome {
                            RunOutcome::Exited(code) => Event::Exited(Exit { code: Some(code), reason: String::new(), message: String::new(), at: Time::now() }),
                            RunOutcome::Failed { reason, message } => exit_event(&reason, message),
                        }
                    }
                }
            }
            Some(Action::Report | Action::Kill) => continue,
        };
        actions = machine.step(event, Time::now());
    }
}

fn exit_event(reason: &str, message: String) -> Event {
    Event::Exited(Exit {
        code: None,
        reason: reason.to_string(),
        message,
        at: Time::now(),
    })
}

/// Sets the pod's status from the machine, keeps it locally (so a rebooted
/// node knows it) and queues it for the master.
fn report(
    ctx: &WorkerCtx,
    last: &Mutex<Pod>,
    pod: &mut Pod,
    machine: &PodMachine,
    module: Option<&PodCondition>,
) {
    let mut status = machine.status();
    status.conditions = pod.status.conditions.clone();
    if let Some(c) = module {
        status.set_condition(c.clone());
    }
    let running = status.phase == PodPhase::Running && status.reason.is_empty();
    let was_running = pod
        .status
        .condition(condition::READY)
        .is_some_and(|c| c.status);
    if running != was_running || pod.status.condition(condition::READY).is_none() {
        status.set_condition(PodCondition {
            type_: condition::READY.into(),
            status: running,
            last_transition_time: Some(Time::now()),
            reason: status.reason.clone(),
            message: String::new(),
        });
    }
    status.observed_generation = pod.status.observed_generation + 1;
    pod.status = status;
    if let Err(e) = ctx.local.put_pod(pod) {
        tracing::warn!(error = %e, "cannot persist pod status locally");
    }
    // Sent under the lock, so a status sent again by `report_again` is never
    // queued after a newer one.
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    *last = pod.clone();
    let _ = ctx.reports.send(pod.clone());
}

/// Why a module could not be made ready.
#[derive(Debug, thiserror::Error)]
enum PrepareError {
    /// The bytes cannot be compiled; the pod fails with `InvalidModule`.
    #[error("{0}")]
    Invalid(String),
    /// Anything else (no master, the network, the local store): tried again after a back-off.
    #[error("{0}")]
    Retry(String),
}

/// Gets the module (memory, local store, or master) and compiles it.
/// Returns the program and a message with the timings, e.g.
/// `fetch 3ms (master), compile 61ms (cold)`.
async fn prepare(ctx: &WorkerCtx, digest: &str) -> Result<(Program, String), PrepareError> {
    let retry = |e: &dyn std::fmt::Display| PrepareError::Retry(e.to_string());
    if let Some(p) = ctx
        .programs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(digest)
        .cloned()
    {
        return Ok((p, "fetch 0ms (memory), compile 0ms (memory)".into()));
    }
    let t0 = Instant::now();
    let (bytes, source) = match ctx.local.module(digest).map_err(|e| retry(&e))? {
        Some(b) => (b, "local"),
        None => {
            let client = ctx.client.borrow().clone();
            let client = client.ok_or_else(|| {
                PrepareError::Retry(format!(
                    "module {digest} is not cached on this node and no master is connected"
                ))
            })?;
            let bytes = fetch(&client, digest).await.map_err(PrepareError::Retry)?;
            ctx.local
                .put_module(digest, &bytes)
                .map_err(|e| retry(&e))?;
            (bytes, "master")
        }
    };
    let fetch_ms = t0.elapsed().as_millis();
    let rt = ctx.runtime.clone();
    let d = digest.to_string();
    let (program, info) = tokio::task::spawn_blocking(move || rt.load(&d, &bytes))
        .await
        .map_err(|e| PrepareError::Retry(format!("compile task failed: {e}")))?
        .map_err(|e| match e {
            // The digest names these bytes forever: the same compile fails the same way.
            RuntimeError::InvalidModule { message } => PrepareError::Invalid(message),
            other => retry(&other),
        })?;
    ctx.programs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(digest.to_string(), program.clone());
    let kind = if info.cached { "cached" } else { "cold" };
    Ok((
        program,
        format!(
            "fetch {fetch_ms}ms ({source}), compile {}ms ({kind})",
            info.duration.as_millis()
        ),
    ))
}

/// Downloads a module from the master and checks its digest.
pub async fn fetch(client: &Client, digest: &str) -> Result<Vec<u8>, String> {
    let (_send, mut recv) = client
        .open(&Request::GetModule {
            digest: digest.to_string(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    loop {
        match read_frame::<Response>(&mut recv)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(Response::Chunk(c)) => {
                if bytes.len() + c.len() > flotilla_api::protocol::MAX_MODULE_SIZE as usize {
                    return Err("module exceeds the size limit".into());
                }
                bytes.extend_from_slice(&c);
            }
            Some(Response::End) => break,
            Some(Response::Error(e)) => return Err(e.to_string()),
            Some(other) => {
                return Err(format!(
                    "unexpected answer while fetching a module: {other:?}"
                ))
            }
            None => return Err("the master closed the module stream early".into()),
        }
    }
    let actual = digest_of(&bytes);
    if actual != digest {
        return Err(format!(
            "module from the master hashes to {actual}, not {digest}"
        ));
    }
    Ok(bytes)
}
