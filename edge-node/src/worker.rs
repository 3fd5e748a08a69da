//! One worker per pod: performs the actions of the pod's state machine
//! ([`crate::pod`]) — fetch and compile the module, run it, wait out
//! back-offs, report status — and feeds the outcomes back as events.
//! It also closes the pod's log when the program has ended for good, so
//! `logs -f` ends with it, and lets go of the compiled program then, so
//! memory holds only programs that may still run ([`crate::module_gc`]).

use crate::local::LocalStore;
use crate::logs::PodLog;
use crate::module_gc::{InUse, Lease};
use crate::network::{Allowance, Refusals};
use crate::pod::{Action, Event, Exit, PodMachine};
use crate::probe::{Probes, Verdict};
use crate::runtime::{LogSink, Program, RunOutcome, RunSpec, Runtime, RuntimeError};
use flotilla_api::net::{read_frame, Client};
use flotilla_api::objects::{condition, digest_of, PodCondition, PodPhase};
use flotilla_api::protocol::{Request, Response};
use flotilla_api::time::Time;
use flotilla_api::Pod;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What every worker shares.
pub struct WorkerCtx {
    pub runtime: Runtime,
    pub local: LocalStore,
    /// The current master connection, if any.
    pub client: watch::Receiver<Option<Client>>,
    /// Compiled programs by digest, so a pod of a module that another pod
    /// runs skips even the disk cache. Weak: the workers that may still run
    /// a program hold it, and the last one to go frees it (compiled code is
    /// megabytes per module, and modules come and go).
    pub programs: Mutex<HashMap<String, Weak<Program>>>,
    /// Status reports for the master (see `agent::report_loop`).
    pub reports: mpsc::UnboundedSender<Pod>,
    /// The modules of the pods that have a worker (see [`crate::module_gc`]).
    pub in_use: InUse,
    /// Where pods' volumes live, and which host paths they may mount.
    pub volumes: crate::volumes::VolumeConfig,
    /// The http pods this node serves, for its proxy.
    pub served: crate::proxy::served::Served,
    /// Whether modules' code is asked of the masters before compiling here.
    pub precompiled: bool,
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
pub fn spawn(pod: Pod, ctx: Arc<WorkerCtx>, logs: Arc<PodLog>) -> WorkerHandle {
    let stop = CancellationToken::new();
    let uid = pod.metadata.uid.clone();
    // The log may have been closed by an earlier worker of this pod.
    logs.reopen();
    let last = Arc::new(Mutex::new(pod.clone()));
    // Taken before the task starts: the module is in use from the moment
    // the agent hands the pod over, even before it is fetched.
    let lease = ctx.in_use.acquire(&pod.spec.module);
    let task = tokio::spawn(run(pod, ctx, logs, last.clone(), stop.clone(), lease));
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
    logs: Arc<PodLog>,
    last: Arc<Mutex<Pod>>,
    stop: CancellationToken,
    // Held until the worker is gone: the pod keeps its module on disk.
    _lease: Lease,
) {
    let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
    let (mut machine, mut actions) = PodMachine::resume(pod.spec.restart_policy, &pod.status);
    let mut program: Option<Arc<Program>> = None;
    let mut module_condition = pod.status.condition(condition::MODULE_READY).cloned();
    let refusals = Arc::new(Refusals::resume(pod.status.network_refusals.as_ref()));
    // What the readiness probe of the current run last said (None: no
    // probe, or no run).
    let mut probed: Option<(bool, String)> = None;
    loop {
        let mut next = None;
        for a in actions.drain(..) {
            match a {
                Action::Report => report(
                    &ctx,
                    &last,
                    &mut pod,
                    &machine,
                    module_condition.as_ref(),
                    &refusals,
                    probed.as_ref(),
                ),
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
                // being replaced, and the log already belongs to the next).
                if !stop.is_cancelled() {
                    logs.end();
                }
                // It will not run again; the pod object may stay for days.
                drop(program.take());
                stop.cancelled().await;
                return;
            }
            Some(Action::Prepare) => tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                r = prepare(&ctx, &pod.spec.module, &stop) => match r {
                    Ok((p, message)) => {
                        program = Some(p);
                        module_condition = Some(PodCondition {
                            type_: condition::MODULE_READY.into(),
                            status: true,
                            last_transition_time: Some(Time::now()),
                            reason: "Compiled".into(),
                            message,
                        });
                        // What the pod reads must be there before its
                        // first start; until then it waits, Pending.
                        match crate::data::ready(&ctx, &pod).await {
                            Ok(()) => Event::Prepared,
                            Err(e) => {
                                tracing::info!(pod = %key, error = %e, "waiting for the pod's configmaps and secrets");
                                Event::PrepareFailed { reason: e.reason().into(), message: e.to_string() }
                            }
                        }
                    }
                    // Killed with the pod: not a failure of the module.
                    Err(_) if stop.is_cancelled() => Event::Stop,
                    Err(PrepareError::Invalid { reason, message }) => {
                        tracing::warn!(pod = %key, %reason, %message, "module cannot be compiled; the pod fails");
                        module_condition = Some(PodCondition {
                            type_: condition::MODULE_READY.into(),
                            status: false,
                            last_transition_time: Some(Time::now()),
                            reason: reason.into(),
                            message: message.clone(),
                        });
                        Event::ModuleInvalid { reason: reason.into(), message }
                    }
                    Err(PrepareError::Retry(message)) => {
                        tracing::warn!(pod = %key, %message, "module not ready");
                        Event::PrepareFailed { reason: String::new(), message }
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
                probed = pod
                    .spec
                    .readiness_probe
                    .as_ref()
                    .map(|_| (false, "waiting for the readiness probe to pass".to_string()));
                // Report Running before the guest starts, so short pods show the transition too.
                for a in machine.step(Event::Started, Time::now()) {
                    if a == Action::Report {
                        report(
                            &ctx,
                            &last,
                            &mut pod,
                            &machine,
                            module_condition.as_ref(),
                            &refusals,
                            probed.as_ref(),
                        );
                    }
                }
                tracing::info!(pod = %key, restarts = machine.restart_count, "started pod");
                // Each run writes a log of its own; the one before stays for `logs --previous`.
                {
                    let logs = logs.clone();
                    let restarts = machine.restart_count;
                    let _ = tokio::task::spawn_blocking(move || logs.start_run(restarts)).await;
                }
                if let Err(e) = crate::data::sync_volumes(&ctx, &pod).await {
                    tracing::warn!(pod = %key, error = %e, "cannot mount the pod's configmaps and secrets");
                    actions = machine.step(exit_event(e.reason(), e.to_string()), Time::now());
                    continue;
                }
                let prepared = {
                    let (cfg, p) = (ctx.volumes.clone(), pod.clone());
                    tokio::task::spawn_blocking(move || crate::volumes::prepare(&cfg, &p))
                        .await
                        .unwrap_or_else(|e| Err(crate::volumes::VolumeError::Io(e.to_string())))
                };
                let (mounts, limited) = match prepared {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %e, "cannot set up the pod's volumes");
                        actions = machine.step(exit_event(e.reason(), e.to_string()), Time::now());
                        continue;
                    }
                };
                let env = match crate::data::resolve_env(&ctx, &pod).await {
                    Ok(env) => env,
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %e, "cannot resolve the pod's environment");
                        actions = machine.step(exit_event(e.reason(), e.to_string()), Time::now());
                        continue;
                    }
                };
                let (allowance, unresolved) =
                    Allowance::resolve(&pod.spec.network, |name| async move {
                        tokio::net::lookup_host((name, 0))
                            .await
                            .map(|addrs| addrs.map(|a| a.ip()).collect())
                    })
                    .await;
                for u in unresolved {
                    tracing::warn!(pod = %key, host = %u, "a host of the pod's spec.network does not resolve; it allows nothing until the program next starts");
                }
                let spec = RunSpec {
                    env,
                    mounts,
                    network: Arc::new(allowance),
                    refusals: refusals.clone(),
                    pod: key.clone(),
                    name: pod
                        .spec
                        .argv0
                        .clone()
                        .unwrap_or_else(|| pod.metadata.name.clone()),
                    args: pod.spec.args.clone(),
                    memory_limit: pod
                        .spec
                        .resources
                        .limits
                        .memory
                        .as_ref()
                        .and_then(|q| q.bytes().ok()),
                    cpu_limit: pod
                        .spec
                        .resources
                        .limits
                        .cpu
                        .as_ref()
                        .and_then(|q| q.millicores().ok()),
                };
                let sink: Arc<dyn LogSink> = logs.clone();
                let watched = pod.clone();
                let keep = crate::data::keep_volumes(&ctx, &watched);
                let sizes = watch_sizes(limited);
                // An http program "runs" while it is served: until the pod
                // stops, or its registration is dropped with this loop.
                let mut _serving = None;
                let mut http_pod = None;
                let instance: std::pin::Pin<
                    Box<dyn std::future::Future<Output = RunOutcome> + Send>,
                > = if ctx.runtime.is_http(&p) {
                    match ctx.runtime.serve(&p, spec, sink, http_limits(&pod)) {
                        Ok(served) => {
                            tracing::info!(pod = %key, "serving http");
                            let served = Arc::new(served);
                            http_pod = Some(served.clone());
                            _serving = Some(ctx.served.register(&key, &pod.metadata.uid, served));
                            Box::pin(std::future::pending())
                        }
                        Err(outcome) => Box::pin(std::future::ready(outcome)),
                    }
                } else {
                    // A command pod's only health is that it runs; the
                    // proxy may reach the TCP ports it listens on.
                    probed = None;
                    let ports: Vec<u16> = pod
                        .spec
                        .network
                        .listen
                        .iter()
                        .filter(|l| l.protocol == flotilla_api::objects::network::Protocol::Tcp)
                        .map(|l| l.port)
                        .collect();
                    if !ports.is_empty() {
                        _serving = Some(ctx.served.register_tcp(&key, &pod.metadata.uid, ports));
                    }
                    Box::pin(ctx.runtime.run(&p, spec, sink))
                };
                let mut probes = Probes::new(
                    pod.spec.startup_probe.as_ref(),
                    pod.spec.liveness_probe.as_ref(),
                    pod.spec.readiness_probe.as_ref(),
                );
                tokio::pin!(keep, sizes, instance);
                // Refusals are reported at most once a second while it runs.
                let mut refused_report: Option<tokio::time::Instant> = None;
                loop {
                    let report_at = refused_report.unwrap_or_else(tokio::time::Instant::now);
                    break tokio::select! {
                        _ = stop.cancelled() => Event::Stop,
                        never = &mut keep => match never {},
                        over = &mut sizes => {
                            tracing::warn!(pod = %key, %over, "an emptyDir went over its size limit; stopping the pod");
                            exit_event("EmptyDirSizeLimit", over)
                        }
                        outcome = &mut instance => {
                            tracing::info!(pod = %key, ?outcome, "pod instance ended");
                            match outcome {
                                RunOutcome::Exited(code) => Event::Exited(Exit { code: Some(code), reason: String::new(), message: String::new(), at: Time::now() }),
                                RunOutcome::Failed { reason, message } => exit_event(&reason, message),
                            }
                        }
                        verdict = async {
                            match &http_pod {
                                Some(p) => probes.next_verdict(p).await,
                                None => std::future::pending().await,
                            }
                        } => match verdict {
                            Verdict::Restart(why) => {
                                tracing::warn!(pod = %key, %why, "restarting an unhealthy pod");
                                exit_event("Unhealthy", why)
                            }
                            Verdict::Ready(ready, why) => {
                                tracing::info!(pod = %key, ready, %why, "readiness changed");
                                probed = Some((ready, why));
                                report(&ctx, &last, &mut pod, &machine, module_condition.as_ref(), &refusals, probed.as_ref());
                                continue;
                            }
                        },
                        _ = refusals.changed.notified(), if refused_report.is_none() => {
                            refused_report = Some(tokio::time::Instant::now() + REFUSAL_REPORT);
                            continue;
                        }
                        _ = tokio::time::sleep_until(report_at), if refused_report.is_some() => {
                            refused_report = None;
                            report(&ctx, &last, &mut pod, &machine, module_condition.as_ref(), &refusals, probed.as_ref());
                            continue;
                        }
                    };
                }
            }
            Some(Action::Report | Action::Kill) => continue,
        };
        actions = machine.step(event, Time::now());
    }
}

/// What bounds an http pod's requests, from its spec.
fn http_limits(pod: &Pod) -> crate::runtime::http::HttpLimits {
    let h = &pod.spec.http;
    crate::runtime::http::HttpLimits {
        concurrency: h.concurrency() as usize,
        timeout: h.timeout(),
        request_memory: h.request_memory.as_ref().and_then(|q| q.bytes().ok()),
    }
}

/// How long after a network refusal the pod's status reports it (and
/// the others that came meanwhile).
const REFUSAL_REPORT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often emptyDir size limits are checked while a program runs.
const SIZE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns (with what happened) once an emptyDir of `limited` holds more
/// than its limit; never if there is none.
async fn watch_sizes(limited: Vec<crate::volumes::Limited>) -> String {
    if limited.is_empty() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(SIZE_CHECK).await;
        let dirs = limited.clone();
        let over = tokio::task::spawn_blocking(move || {
            dirs.into_iter().find_map(|l| {
                let used = crate::volumes::usage(&l.dir);
                (used > l.limit).then(|| {
                    format!(
                        "emptyDir volume {} holds {used} bytes, over its sizeLimit of {} bytes",
                        l.volume, l.limit
                    )
                })
            })
        })
        .await
        .ok()
        .flatten();
        if let Some(over) = over {
            return over;
        }
    }
}

fn exit_event(reason: &str, message: String) -> Event {
    Event::Exited(Exit {
        code: crate::pod::exit_code_of(reason),
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
    refusals: &Refusals,
    probed: Option<&(bool, String)>,
) {
    let mut status = machine.status();
    status.network_refusals = refusals.snapshot();
    status.conditions = pod.status.conditions.clone();
    if let Some(c) = module {
        status.set_condition(c.clone());
    }
    let running = status.phase == PodPhase::Running && status.reason.is_empty();
    // A readiness probe has the last word while the program runs.
    let (ready, reason, message) = match probed {
        Some((false, why)) if running => (false, "ReadinessProbeFailed".to_string(), why.clone()),
        _ => (running, status.reason.clone(), String::new()),
    };
    let was = pod.status.condition(condition::READY);
    if was.is_none_or(|c| c.status != ready || c.reason != reason) {
        status.set_condition(PodCondition {
            type_: condition::READY.into(),
            status: ready,
            last_transition_time: Some(Time::now()),
            reason,
            message,
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
    /// The bytes cannot be compiled (`InvalidModule`), or not within the
    /// node's compile limits (`CompileLimit`): the pod fails with `reason`.
    #[error("{message}")]
    Invalid {
        reason: &'static str,
        message: String,
    },
    /// Anything else (no master, the network, the local store): tried again after a back-off.
    #[error("{0}")]
    Retry(String),
}

/// Gets the module (memory, local store, or master) and compiles it.
/// Returns the program and a message with the timings, e.g.
/// `fetch 3ms (master), compile 61ms (cold)`. A compile still running when
/// `stop` fires is killed, and its code is not cached.
async fn prepare(
    ctx: &WorkerCtx,
    digest: &str,
    stop: &CancellationToken,
) -> Result<(Arc<Program>, String), PrepareError> {
    let retry = |e: &dyn std::fmt::Display| PrepareError::Retry(e.to_string());
    if let Some(p) = ctx
        .programs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(digest)
        .and_then(Weak::upgrade)
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
    if let Some(loaded) = precompiled(ctx, digest).await {
        let program = share(&ctx.programs, digest, loaded.0);
        return Ok((
            program,
            format!(
                "fetch {fetch_ms}ms ({source}), code {}ms (precompiled by the master)",
                loaded.1
            ),
        ));
    }
    let rt = ctx.runtime.clone();
    let d = digest.to_string();
    let stop = stop.clone();
    let (program, info) =
        tokio::task::spawn_blocking(move || rt.load_cancellable(&d, &bytes, &stop))
            .await
            .map_err(|e| PrepareError::Retry(format!("compile task failed: {e}")))?
            .map_err(|e| match e {
                // The digest names these bytes forever: the same compile fails the same way.
                RuntimeError::InvalidModule { message } => PrepareError::Invalid {
                    reason: "InvalidModule",
                    message,
                },
                // The node's limits hold until it restarts with other flags: no retry.
                RuntimeError::CompileLimit { message } => PrepareError::Invalid {
                    reason: "CompileLimit",
                    message,
                },
                other => retry(&other),
            })?;
    let program = share(&ctx.programs, digest, program);
    let kind = if info.cached { "cached" } else { "cold" };
    Ok((
        program,
        format!(
            "fetch {fetch_ms}ms ({source}), compile {}ms ({kind})",
            info.duration.as_millis()
        ),
    ))
}

/// The program for `digest` from code a master compiled for this node's
/// engine, with the milliseconds it took to fetch and load; None when the
/// disk cache has code already, no master is connected, or the master
/// cannot give code that loads here (the caller then compiles, and says
/// why in the node's log).
async fn precompiled(ctx: &WorkerCtx, digest: &str) -> Option<(Program, u128)> {
    if !ctx.precompiled || ctx.runtime.has_compiled(digest) {
        return None;
    }
    let client = ctx.client.borrow().clone()?;
    let t0 = Instant::now();
    let rt = ctx.runtime.clone();
    let fetched = fetch_code(&client, digest, rt.code_target(), rt.fingerprint()).await;
    let (sha256, code) = match fetched {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(module = %digest, reason = %e, "no precompiled code from the master; compiling here");
            return None;
        }
    };
    let d = digest.to_string();
    let loaded = tokio::task::spawn_blocking(move || rt.load_precompiled(&d, &code, &sha256))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match loaded {
        Ok((program, _)) => Some((program, t0.elapsed().as_millis())),
        Err(e) => {
            tracing::warn!(module = %digest, reason = %e, "refused the master's precompiled code; compiling here");
            None
        }
    }
}

/// The program to run for `digest`: one that another worker compiled
/// meanwhile, so that both share one copy, or else `compiled`, now shared.
/// Entries whose programs are gone are dropped on the way.
fn share(
    programs: &Mutex<HashMap<String, Weak<Program>>>,
    digest: &str,
    compiled: Program,
) -> Arc<Program> {
    let mut map = programs.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, p| p.strong_count() > 0);
    if let Some(p) = map.get(digest).and_then(Weak::upgrade) {
        return p;
    }
    let p = Arc::new(compiled);
    map.insert(digest.to_string(), Arc::downgrade(&p));
    p
}

/// Module downloads a node makes at once; more pods wait their turn. A
/// master lets a node's connection carry few streams at once
/// (`flotilla_api::net::NODE_STREAMS`), and the node's watch, heartbeats
/// and reports must always find one; an edge link is better used by a few
/// downloads that finish than by many that crawl.
const DOWNLOADS: usize = 4;

static DOWNLOADING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DOWNLOADS);

/// Most bytes of compiled code a node takes from a master: code is a few
/// times the size of its module, which is at most 64 MiB.
const MAX_CODE_SIZE: u64 = 4 * flotilla_api::protocol::MAX_MODULE_SIZE;

/// Downloads a module from the master and checks its digest.
pub async fn fetch(client: &Client, digest: &str) -> Result<Vec<u8>, String> {
    let request = Request::GetModule {
        digest: digest.to_string(),
    };
    let (_, bytes) = download(
        client,
        &request,
        flotilla_api::protocol::MAX_MODULE_SIZE,
        "module",
    )
    .await?;
    let actual = digest_of(&bytes);
    if actual != digest {
        return Err(format!(
            "module from the master hashes to {actual}, not {digest}"
        ));
    }
    Ok(bytes)
}

/// Downloads the code a master compiled from module `digest` for an
/// engine for `target` with `fingerprint`: the digest the master records
/// for the code, and the code (checked against it by the caller, which
/// loads it).
async fn fetch_code(
    client: &Client,
    digest: &str,
    target: &flotilla_api::objects::CodeTarget,
    fingerprint: &str,
) -> Result<(String, Vec<u8>), String> {
    let request = Request::GetCode {
        digest: digest.to_string(),
        target: target.clone(),
        fingerprint: fingerprint.to_string(),
    };
    let (head, bytes) = download(client, &request, MAX_CODE_SIZE, "code").await?;
    let Some((sha256, size)) = head else {
        return Err("the master sent code without saying its digest".into());
    };
    if bytes.len() as u64 != size {
        return Err(format!(
            "the master announced {size} bytes of code and sent {}",
            bytes.len()
        ));
    }
    Ok((sha256, bytes))
}

/// Sends `request` and gathers the `Chunk`s that answer it, up to `limit`
/// bytes, with the `Code` head that precedes them, if any. `what` names
/// the download in errors.
async fn download(
    client: &Client,
    request: &Request,
    limit: u64,
    what: &str,
) -> Result<(Option<(String, u64)>, Vec<u8>), String> {
    // Never closed, so acquiring only waits.
    let _turn = DOWNLOADING.acquire().await.map_err(|e| e.to_string())?;
    let (_send, mut recv) = client.open(request).await.map_err(|e| e.to_string())?;
    let mut head = None;
    let mut bytes = Vec::new();
    loop {
        match read_frame::<Response>(&mut recv)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(Response::Code { sha256, size }) if head.is_none() && bytes.is_empty() => {
                if size > limit {
                    return Err(format!(
                        "{what} of {size} bytes exceeds the limit of {limit}"
                    ));
                }
                head = Some((sha256, size));
            }
            Some(Response::Chunk(c)) => {
                if (bytes.len() + c.len()) as u64 > limit {
                    return Err(format!("{what} exceeds the size limit of {limit} bytes"));
                }
                bytes.extend_from_slice(&c);
            }
            Some(Response::End) => break,
            Some(Response::Error(e)) => return Err(e.to_string()),
            Some(other) => {
                return Err(format!(
                    "unexpected answer while fetching a {what}: {other:?}"
                ))
            }
            None => return Err(format!("the master closed the {what} stream early")),
        }
    }
    Ok((head, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::objects::RestartPolicy;
    use std::time::Duration;

    fn pod(name: &str, module: &str, policy: RestartPolicy) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = "default".into();
        p.metadata.name = name.into();
        p.metadata.uid = format!("uid-{name}");
        p.spec.module = module.into();
        p.spec.restart_policy = policy;
        p
    }

    fn held(ctx: &WorkerCtx, digest: &str) -> bool {
        let map = ctx.programs.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest).is_some_and(|p| p.strong_count() > 0)
    }

    /// Waits (up to 30 s) until `f` holds, taking status reports as they come.
    async fn until(
        what: &str,
        reports: &mut mpsc::UnboundedReceiver<Pod>,
        phases: &mut HashMap<String, PodPhase>,
        mut f: impl FnMut(&HashMap<String, PodPhase>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !f(phases) {
            tokio::select! {
                Some(p) = reports.recv() => { phases.insert(p.metadata.name.clone(), p.status.phase); }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tokio::time::sleep_until(deadline) => panic!("timed out waiting for {what}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_program_is_held_only_while_a_pod_may_run_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let local = LocalStore::open(&dir.path().join("node.redb")).expect("store");
        let mut digests = HashMap::new();
        for name in ["ticker", "hello"] {
            let bytes = std::fs::read(flotilla_workloads::path(name)).expect("workload");
            let d = digest_of(&bytes);
            local.put_module(&d, &bytes).expect("module");
            digests.insert(name, d);
        }
        let (ticker, hello) = (digests["ticker"].clone(), digests["hello"].clone());
        let (report_tx, mut reports) = mpsc::unbounded_channel();
        let ctx = Arc::new(WorkerCtx {
            runtime: Runtime::new(&dir.path().join("compiled")).expect("runtime"),
            local,
            client: watch::channel(None).1,
            programs: Mutex::default(),
            reports: report_tx,
            in_use: InUse::default(),
            volumes: crate::volumes::VolumeConfig::new(dir.path(), "n1", vec![]),
            served: Default::default(),
            precompiled: false,
        });
        let start = |p: Pod| {
            let logs = PodLog::in_dir(&dir.path().join("logs").join(&p.metadata.name));
            spawn(p, ctx.clone(), logs)
        };
        let a = start(pod("a", &ticker, RestartPolicy::Always));
        let b = start(pod("b", &ticker, RestartPolicy::Always));
        let c = start(pod("c", &hello, RestartPolicy::Never));
        let mut phases = HashMap::new();
        until("a, b running and c done", &mut reports, &mut phases, |p| {
            p.get("a") == Some(&PodPhase::Running)
                && p.get("b") == Some(&PodPhase::Running)
                && p.get("c") == Some(&PodPhase::Succeeded)
        })
        .await;
        // c has ended for good: its program goes at once, its module stays in use.
        until("c to let go of hello", &mut reports, &mut phases, |_| {
            !held(&ctx, &hello)
        })
        .await;
        assert!(held(&ctx, &ticker));
        assert_eq!(ctx.in_use.digests(), [ticker.clone(), hello.clone()].into());

        a.stop.cancel();
        a.task.await.expect("a");
        assert!(held(&ctx, &ticker), "b still runs ticker");
        b.stop.cancel();
        b.task.await.expect("b");
        assert!(!held(&ctx, &ticker), "no pod runs ticker");
        assert_eq!(ctx.in_use.digests(), [hello].into());
        c.stop.cancel();
        c.task.await.expect("c");
        assert!(ctx.in_use.digests().is_empty());
    }
}
