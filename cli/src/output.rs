//! Printing objects: aligned tables like kubectl's, or YAML/JSON in manifest shape.

use flotilla_api::objects::event::Event;
use flotilla_api::objects::{
    CronJob, DaemonSet, Deployment, Job, Module, Namespace, Node, Pod, PodPhase, PriorityClass,
    ReplicaSet,
};
use flotilla_api::quantity::format_bytes;
use flotilla_api::time::{age, Time};
use flotilla_api::Object;

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

/// Renders rows as columns separated by three spaces, as kubectl does.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    Table::new(header, rows.to_vec()).to_string()
}

/// A table of a `get`: its header and rows, printed as [`table`] does, or
/// row by row against column widths kept from earlier rows (`get -w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str], rows: Vec<Vec<String>>) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows,
        }
    }

    /// Each column's width: its widest cell, header included.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            widen(&mut widths, r);
        }
        widths
    }
}

/// Makes `widths` fit `cells` too.
pub fn widen(widths: &mut [usize], cells: &[String]) {
    for (w, c) in widths.iter_mut().zip(cells) {
        *w = (*w).max(c.chars().count());
    }
}

/// One line of a table: every cell but the last padded to its width, three
/// spaces between.
pub fn table_line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i + 1 == cells.len() {
            s.push_str(c);
        } else {
            let w = widths.get(i).copied().unwrap_or(0);
            s.push_str(&format!("{c:<w$}   "));
        }
    }
    s.trim_end().to_string()
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let widths = self.widths();
        writeln!(f, "{}", table_line(&self.header, &widths))?;
        for r in &self.rows {
            writeln!(f, "{}", table_line(r, &widths))?;
        }
        Ok(())
    }
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// Pod STATUS column: the reason when there is one (CrashLoopBackOff,
/// OOMKilled, `Completed` for a pod that ran to success), else the phase.
/// `Unknown` (the pod's node is not ready) shows as such, as kubectl shows
/// it; the reason (`NodeLost`) is in `describe`.
pub fn pod_status(p: &Pod) -> String {
    if p.metadata.is_deleting() {
        return "Terminating".into();
    }
    if p.status.phase == PodPhase::Unknown {
        return p.status.phase.to_string();
    }
    if !p.status.reason.is_empty() {
        p.status.reason.clone()
    } else {
        p.status.phase.to_string()
    }
}

pub fn pods(items: &[Pod], wide: bool, now: Time) -> Table {
    let mut header = vec!["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if wide {
        header.extend(["NODE", "EXIT", "MODULE"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            let ready = p
                .status
                .condition(flotilla_api::objects::condition::READY)
                .is_some_and(|c| c.status);
            let mut r = vec![
                p.metadata.namespace.clone(),
                p.metadata.name.clone(),
                format!("{}/1", u8::from(ready)),
                pod_status(p),
                restarts(p, now),
                p.metadata
                    .creation_timestamp
                    .map(|t| age(t, now))
                    .unwrap_or_default(),
            ];
            if wide {
                r.push(or_none(p.spec.node_name.as_deref().unwrap_or("")));
                r.push(
                    p.status
                        .exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "<none>".into()),
                );
                r.push(p.spec.module.chars().take(19).collect());
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

/// RESTARTS as kubectl shows it: the count, and how long ago the last
/// restarted run ended (`2 (20s ago)`).
fn restarts(p: &Pod, now: Time) -> String {
    let n = p.status.restart_count;
    match p.status.last_state.as_ref().and_then(|l| l.finished_at) {
        Some(at) if n > 0 => format!("{n} ({} ago)", age(at, now)),
        _ => n.to_string(),
    }
}

fn age_of(m: &flotilla_api::ObjectMeta, now: Time) -> String {
    m.creation_timestamp
        .map(|t| age(t, now))
        .unwrap_or_default()
}

fn selector_text(s: &flotilla_api::objects::LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in &s.match_expressions {
        parts.push(format!(
            "{} {:?} ({})",
            r.key,
            r.operator,
            r.values.join(",")
        ));
    }
    or_none(&parts.join(","))
}

/// Deployments, as kubectl lists them: READY is ready/wanted, UP-TO-DATE
/// the pods of the current template, AVAILABLE those ready long enough.
pub fn deployments(items: &[Deployment], wide: bool, now: Time) -> Table {
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AGE",
    ];
    if wide {
        header.extend(["MODULE", "SELECTOR"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let mut r = vec![
                d.metadata.namespace.clone(),
                d.metadata.name.clone(),
                format!("{}/{}", d.status.ready_replicas, d.spec.replicas()),
                d.status.updated_replicas.to_string(),
                d.status.available_replicas.to_string(),
                age_of(&d.metadata, now),
            ];
            if wide {
                r.push(d.spec.template.spec.module.chars().take(19).collect());
                r.push(selector_text(&d.spec.selector));
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

/// DaemonSets, as kubectl lists them: counts of nodes.
pub fn daemon_sets(items: &[DaemonSet], wide: bool, now: Time) -> Table {
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AGE",
    ];
    if wide {
        header.extend(["MODULE", "SELECTOR"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let s = &d.status;
            let mut r = vec![
                d.metadata.namespace.clone(),
                d.metadata.name.clone(),
                s.desired_number_scheduled.to_string(),
                s.current_number_scheduled.to_string(),
                s.number_ready.to_string(),
                s.updated_number_scheduled.to_string(),
                s.number_available.to_string(),
                age_of(&d.metadata, now),
            ];
            if wide {
                r.push(d.spec.template.spec.module.chars().take(19).collect());
                r.push(selector_text(&d.spec.selector));
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

/// ReplicaSets, as kubectl lists them.
pub fn replica_sets(items: &[ReplicaSet], wide: bool, now: Time) -> Table {
    let mut header = vec!["NAMESPACE", "NAME", "DESIRED", "CURRENT", "READY", "AGE"];
    if wide {
        header.extend(["MODULE", "SELECTOR"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|rs| {
            let mut r = vec![
                rs.metadata.namespace.clone(),
                rs.metadata.name.clone(),
                rs.spec.replicas().to_string(),
                rs.status.replicas.to_string(),
                rs.status.ready_replicas.to_string(),
                age_of(&rs.metadata, now),
            ];
            if wide {
                r.push(rs.spec.template.spec.module.chars().take(19).collect());
                r.push(selector_text(&rs.spec.selector));
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

/// Jobs, as kubectl lists them: COMPLETIONS is succeeded/wanted, DURATION
/// from the start to completion (or to now while running).
pub fn jobs(items: &[Job], wide: bool, now: Time) -> Table {
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "STATUS",
        "COMPLETIONS",
        "DURATION",
        "AGE",
    ];
    if wide {
        header.extend(["ACTIVE", "FAILED", "MODULE"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|j| {
            let s = &j.status;
            let duration = s
                .start_time
                .map(|t| age(t, s.completion_time.unwrap_or(now)))
                .unwrap_or_default();
            let mut r = vec![
                j.metadata.namespace.clone(),
                j.metadata.name.clone(),
                s.summary().to_string(),
                format!("{}/{}", s.succeeded, j.spec.completions()),
                duration,
                age_of(&j.metadata, now),
            ];
            if wide {
                r.push(s.active.to_string());
                r.push(s.failed.to_string());
                r.push(j.spec.template.spec.module.chars().take(19).collect());
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

fn last_seen(e: &Event) -> Time {
    e.last_timestamp
        .or(e.first_timestamp)
        .or(e.metadata.creation_timestamp)
        .unwrap_or_default()
}

/// Events, as kubectl lists them, oldest first: LAST SEEN, TYPE, REASON,
/// OBJECT, MESSAGE (`-o wide` adds SOURCE, COUNT, FIRST SEEN, NAME).
pub fn events(items: &[Event], wide: bool, now: Time) -> Table {
    let mut header = vec!["NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT"];
    if wide {
        header.extend(["SOURCE", "COUNT", "FIRST SEEN", "NAME"]);
    }
    header.push("MESSAGE");
    let mut sorted: Vec<&Event> = items.iter().collect();
    sorted.sort_by_key(|e| (last_seen(e), e.metadata.name.clone()));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|e| {
            let mut r = vec![
                e.metadata.namespace.clone(),
                age(last_seen(e), now),
                e.type_.to_string(),
                e.reason.clone(),
                e.involved_object.describe(),
            ];
            if wide {
                r.push(e.source.to_string());
                r.push(e.count.to_string());
                r.push(e.first_timestamp.map(|t| age(t, now)).unwrap_or_default());
                r.push(e.metadata.name.clone());
            }
            r.push(e.message.clone());
            r
        })
        .collect();
    Table::new(&header, rows)
}

/// What `describe pod` says of the pod's mounts and network, after the
/// manifest: each mount with where its directory comes from, what the
/// program may reach, and what it was refused.
pub fn describe_pod_capabilities(p: &Pod) -> String {
    let mut out = String::new();
    if p.spec.volume_mounts.is_empty() {
        out.push_str("Mounts:  <none>\n");
    } else {
        out.push_str("Mounts:\n");
        for m in &p.spec.volume_mounts {
            let volume = p.spec.volumes.iter().find(|v| v.name == m.name);
            let source = volume
                .map(volume_source)
                .unwrap_or_else(|| "<no such volume>".into());
            let sub = if m.sub_path.is_empty() {
                String::new()
            } else {
                format!(" (subPath {})", m.sub_path)
            };
            let ro = if m.read_only || volume.is_some_and(|v| v.always_read_only()) {
                "ro"
            } else {
                "rw"
            };
            out.push_str(&format!(
                "  {} from {}{sub} ({ro}): {source}\n",
                m.mount_path, m.name
            ));
        }
    }
    let n = &p.spec.network;
    if n.allow.is_empty() && n.listen.is_empty() {
        out.push_str("Network: none (no spec.network)\n");
    } else {
        out.push_str("Network:\n");
        for a in &n.allow {
            let ports = if a.ports.is_empty() {
                "any port".to_string()
            } else {
                let ports: Vec<String> = a.ports.iter().map(u16::to_string).collect();
                format!("port {}", ports.join(","))
            };
            out.push_str(&format!("  to {} {ports}/{}\n", a.host, a.protocol));
        }
        for l in &n.listen {
            out.push_str(&format!("  listen on {}/{}\n", l.port, l.protocol));
        }
    }
    if let Some(r) = &p.status.network_refusals {
        let when = r
            .last_time
            .map(|t| format!(" ({} ago)", age(t, Time::now())))
            .unwrap_or_default();
        out.push_str(&format!(
            "Refused: {} attempt(s) outside spec.network; last: {}{when}\n",
            r.count, r.last
        ));
    }
    out
}

fn volume_source(v: &flotilla_api::objects::volume::Volume) -> String {
    if let Some(e) = &v.empty_dir {
        match &e.size_limit {
            Some(l) => format!("EmptyDir (sizeLimit {})", l.0),
            None => "EmptyDir".into(),
        }
    } else if let Some(h) = &v.host_path {
        format!("HostPath {}", h.path)
    } else if let Some(c) = &v.config_map {
        format!("ConfigMap {}", c.name)
    } else if let Some(s) = &v.secret {
        format!("Secret {}", s.secret_name)
    } else if let Some(pv) = &v.persistent {
        if pv.node.is_empty() {
            format!("Persistent {}", pv.name)
        } else {
            format!("Persistent {} on {}", pv.name, pv.node)
        }
    } else {
        "<no source>".into()
    }
}

/// The `Events:` section `describe` ends with: the object's events, oldest
/// first, a repeated one as `AGE (xN over FIRST)`.
pub fn describe_events(items: &[Event], now: Time) -> String {
    if items.is_empty() {
        return "Events:  <none>\n".into();
    }
    let mut sorted: Vec<&Event> = items.iter().collect();
    sorted.sort_by_key(|e| (last_seen(e), e.metadata.name.clone()));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|e| {
            let seen = age(last_seen(e), now);
            let when = match e.first_timestamp {
                Some(first) if e.count > 1 => {
                    format!("{seen} (x{} over {})", e.count, age(first, now))
                }
                _ => seen,
            };
            vec![
                e.type_.to_string(),
                e.reason.clone(),
                when,
                e.source.to_string(),
                e.message.clone(),
            ]
        })
        .collect();
    let mut out = String::from("Events:\n");
    let dashes: Vec<String> = ["Type", "Reason", "Age", "From", "Message"]
        .iter()
        .map(|h| "-".repeat(h.len()))
        .collect();
    let mut all = vec![dashes];
    all.extend(rows);
    for line in table(&["Type", "Reason", "Age", "From", "Message"], &all).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// ConfigMaps: how many keys each holds.
pub fn config_maps(items: &[flotilla_api::objects::ConfigMap], now: Time) -> Table {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            vec![
                c.metadata.namespace.clone(),
                c.metadata.name.clone(),
                (c.data.len() + c.binary_data.len()).to_string(),
                age_of(&c.metadata, now),
            ]
        })
        .collect();
    Table::new(&["NAMESPACE", "NAME", "DATA", "AGE"], rows)
}

/// Secrets: their type and how many keys each holds (never the values).
pub fn secrets(items: &[flotilla_api::objects::Secret], now: Time) -> Table {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                s.metadata.namespace.clone(),
                s.metadata.name.clone(),
                s.type_.clone(),
                s.data.len().to_string(),
                age_of(&s.metadata, now),
            ]
        })
        .collect();
    Table::new(&["NAMESPACE", "NAME", "TYPE", "DATA", "AGE"], rows)
}

/// Services: the ports every node serves (`8080:80/TCP` when the pods'
/// port differs) and the selector; wide adds host names and affinity.
pub fn services(items: &[flotilla_api::objects::service::Service], wide: bool, now: Time) -> Table {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let ports: Vec<String> = s
                .spec
                .ports
                .iter()
                .map(|p| match p.target_port {
                    Some(t) if t != p.port => format!("{}:{t}/{}", p.port, p.protocol),
                    _ => format!("{}/{}", p.port, p.protocol),
                })
                .collect();
            let selector: Vec<String> = s
                .spec
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut row = vec![
                s.metadata.namespace.clone(),
                s.metadata.name.clone(),
                ports.join(","),
                selector.join(","),
                age_of(&s.metadata, now),
            ];
            if wide {
                row.push(if s.spec.hosts.is_empty() {
                    "<none>".into()
                } else {
                    s.spec.hosts.join(",")
                });
                row.push(
                    s.spec
                        .tls
                        .as_ref()
                        .map_or_else(|| "<none>".into(), |t| t.secret_name.clone()),
                );
                row.push(match s.spec.session_affinity {
                    flotilla_api::objects::service::SessionAffinity::None => "None".into(),
                    flotilla_api::objects::service::SessionAffinity::ClientIp => "ClientIP".into(),
                });
            }
            row
        })
        .collect();
    let mut headers = vec!["NAMESPACE", "NAME", "PORT(S)", "SELECTOR", "AGE"];
    if wide {
        headers.extend(["HOSTS", "TLS", "AFFINITY"]);
    }
    Table::new(&headers, rows)
}

/// Endpoints: the ready pods as `pod@node` (at most three, then how many
/// more), and how many are not ready.
pub fn endpoints(items: &[flotilla_api::objects::service::Endpoints], now: Time) -> Table {
    const SHOWN: usize = 3;
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let ready: Vec<String> = e
                .endpoints
                .iter()
                .filter(|x| x.ready)
                .map(|x| format!("{}@{}", x.pod, x.node))
                .collect();
            let mut shown = if ready.is_empty() {
                "<none>".to_string()
            } else {
                ready[..ready.len().min(SHOWN)].join(",")
            };
            if ready.len() > SHOWN {
                shown.push_str(&format!(" + {} more...", ready.len() - SHOWN));
            }
            vec![
                e.metadata.namespace.clone(),
                e.metadata.name.clone(),
                shown,
                (e.endpoints.len() - ready.len()).to_string(),
                age_of(&e.metadata, now),
            ]
        })
        .collect();
    Table::new(
        &["NAMESPACE", "NAME", "ENDPOINTS", "NOT-READY", "AGE"],
        rows,
    )
}

/// What `describe service` says of its pods: each with its node and
/// whether it takes traffic.
pub fn describe_service_endpoints(e: Option<&flotilla_api::objects::service::Endpoints>) -> String {
    let Some(e) = e.filter(|e| !e.endpoints.is_empty()) else {
        return "\nEndpoints:  <none> (no bound pod matches the selector yet)\n".into();
    };
    let ready = e.endpoints.iter().filter(|x| x.ready).count();
    let mut out = format!("\nEndpoints:  {ready} ready of {}\n", e.endpoints.len());
    for x in &e.endpoints {
        let state = if x.ready { "ready" } else { "not ready" };
        out.push_str(&format!("  {} on {}: {state}\n", x.pod, x.node));
    }
    out
}

/// Namespaces: Active, or Terminating while their contents are deleted.
pub fn namespaces(items: &[Namespace], now: Time) -> Table {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|n| {
            vec![
                n.metadata.name.clone(),
                n.phase().to_string(),
                age_of(&n.metadata, now),
            ]
        })
        .collect();
    Table::new(&["NAME", "STATUS", "AGE"], rows)
}

/// Users: their role, the namespace they are limited to, whether they are
/// revoked, and when their newest certificate expires.
pub fn users(items: &[flotilla_api::objects::User], now: Time) -> Table {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|u| {
            let scope = if u.spec.namespace.is_empty() {
                "<all namespaces>".to_string()
            } else {
                u.spec.namespace.clone()
            };
            let status = match u.status.revoked {
                Some(at) => format!("Revoked {} ago", age(at, now)),
                None => "Active".into(),
            };
            let expires = match u.status.expires {
                Some(t) if t.since(now) <= 0 => format!("{t} (expired)"),
                Some(t) => format!("{t} (in {})", age(now, t)),
                None => "<none>".into(),
            };
            vec![
                u.metadata.name.clone(),
                u.spec.role.to_string(),
                scope,
                status,
                expires,
                age_of(&u.metadata, now),
            ]
        })
        .collect();
    Table::new(
        &["NAME", "ROLE", "SCOPE", "STATUS", "CERT EXPIRES", "AGE"],
        rows,
    )
}

/// CronJobs, as kubectl lists them.
pub fn cron_jobs(items: &[CronJob], wide: bool, now: Time) -> Table {
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST SCHEDULE",
        "AGE",
    ];
    if wide {
        header.extend(["CONCURRENCY", "MODULE"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            let mut r = vec![
                c.metadata.namespace.clone(),
                c.metadata.name.clone(),
                c.spec.schedule.clone(),
                c.spec.time_zone().to_string(),
                if c.spec.suspend { "True" } else { "False" }.to_string(),
                c.status.active.len().to_string(),
                c.status
                    .last_schedule_time
                    .map(|t| age(t, now))
                    .unwrap_or_else(|| "<none>".into()),
                age_of(&c.metadata, now),
            ];
            if wide {
                r.push(format!("{:?}", c.spec.concurrency_policy));
                r.push(
                    c.spec
                        .job_template
                        .spec
                        .template
                        .spec
                        .module
                        .chars()
                        .take(19)
                        .collect(),
                );
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

pub fn nodes(items: &[Node], wide: bool, now: Time) -> Table {
    let mut header = vec!["NAME", "STATUS", "ARCH", "AGE"];
    if wide {
        header.extend([
            "CPU",
            "MEMORY",
            "CLASS",
            "ENGINE",
            "SLOTS",
            "THREADS",
            "VERSION",
            "CERT-EXPIRES",
        ]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|n| {
            let mut status = n.status.ready.to_string();
            if n.spec.unschedulable {
                status.push_str(",SchedulingDisabled");
            }
            let mut r = vec![
                n.metadata.name.clone(),
                status,
                or_none(&n.status.node_info.architecture),
                n.metadata
                    .creation_timestamp
                    .map(|t| age(t, now))
                    .unwrap_or_default(),
            ];
            if wide {
                r.push(format!("{}m", n.status.capacity.cpu_millis));
                r.push(format_bytes(n.status.capacity.memory_bytes));
                let engine = &n.status.node_info.engine;
                r.push(or_none(&engine.class));
                r.push(engine_column(&n.status.node_info));
                let known = !engine.class.is_empty();
                r.push(if known {
                    engine.http_slots.to_string()
                } else {
                    "<none>".into()
                });
                r.push(if known {
                    engine.runtime_threads.to_string()
                } else {
                    "<none>".into()
                });
                r.push(or_none(&n.status.node_info.agent_version));
                r.push(cert_expiry(n, now));
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

/// How a node runs code: `pulley32`, `cranelift-baseline` (code any
/// master can compile for it) or `cranelift-native` (for its own CPU);
/// the engine's name alone from a node that reports no profile.
fn engine_column(info: &flotilla_api::objects::NodeInfo) -> String {
    let code = &info.engine.code;
    if code.target.is_empty() {
        or_none(&info.wasm_engine)
    } else if code.target.starts_with("pulley") {
        code.target.clone()
    } else {
        format!("cranelift-{}", code.cpu)
    }
}

/// When a node's certificate expires and how long that is from now, from
/// what the node reported when it registered.
fn cert_expiry(n: &Node, now: Time) -> String {
    let Some(t) = n
        .metadata
        .annotations
        .get(flotilla_api::annotations::CERTIFICATE_EXPIRES)
        .and_then(|s| Time::parse_rfc3339(s))
    else {
        return "<unknown>".into();
    };
    let v = flotilla_api::identity::Validity {
        not_before: t,
        not_after: t,
    };
    let day = t.to_string();
    let day = day.get(..10).unwrap_or(&day);
    format!("{day} ({})", v.left(now))
}

/// The pods (`namespace/name`) that use each module, by digest.
pub type ModuleUsers = std::collections::BTreeMap<String, Vec<String>>;

/// How many pods a wide listing names in its PODS column before "...".
const PODS_SHOWN: usize = 3;
/// Widest IMPORTS cell: a p2 command imports a dozen interfaces, which
/// written out would take a few hundred columns.
const IMPORTS_WIDTH: usize = 60;
/// Packages every WASI p2 command imports (a Rust std `main` does): listed
/// after the others when the IMPORTS cell is shortened, so that what sets a
/// module apart, and decides where it may run (`wasi:sockets` on a node
/// started with `--deny wasi:sockets`), is the last to be cut.
const COMMON_PACKAGES: [&str; 3] = ["wasi:cli", "wasi:clocks", "wasi:io"];

/// PriorityClasses, as kubectl lists them.
pub fn priority_classes(items: &[PriorityClass], now: Time) -> Table {
    let header = vec!["NAME", "VALUE", "GLOBAL-DEFAULT", "PREEMPTION", "AGE"];
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            vec![
                c.metadata.name.clone(),
                c.value.to_string(),
                c.global_default.to_string(),
                format!("{:?}", c.preemption_policy),
                c.metadata
                    .creation_timestamp
                    .map(|t| age(t, now))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    Table::new(&header, rows)
}

/// Modules with their IN-USE column: how many pods use each, or `no` for a
/// module the master removes once it has been unused for `--module-grace`.
/// Wide adds what the program does (`command` or `http`), the pods' names
/// and what the module imports.
pub fn modules(items: &[Module], users: &ModuleUsers, wide: bool, now: Time) -> Table {
    let mut header = vec!["DIGEST", "SIZE", "SOURCE", "IN-USE", "AGE"];
    if wide {
        header.extend(["WORKLOAD", "PODS", "IMPORTS"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|m| {
            let pods = users.get(&m.spec.digest).map(Vec::as_slice).unwrap_or(&[]);
            let mut r = vec![
                m.spec.digest.chars().take(19).collect(),
                format_bytes(m.spec.size),
                or_none(&m.spec.source),
                if pods.is_empty() {
                    "no".to_string()
                } else {
                    pods.len().to_string()
                },
                m.metadata
                    .creation_timestamp
                    .map(|t| age(t, now))
                    .unwrap_or_default(),
            ];
            if wide {
                let mut names = pods
                    .iter()
                    .take(PODS_SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",");
                if pods.len() > PODS_SHOWN {
                    names.push_str(",...");
                }
                r.push(or_none(&m.status.workload));
                r.push(or_none(&names));
                r.push(imports_column(&m.status.imports));
            }
            r
        })
        .collect();
    Table::new(&header, rows)
}

/// A module's imports, comma-joined; when that is wider than
/// [`IMPORTS_WIDTH`], by package (`wasi:cli/stdout@0.2.6` as
/// `wasi:cli@0.2.6`, the level `flotilla node --deny` works at), those of
/// [`COMMON_PACKAGES`] last, cut with `+N more` if still too wide. `-o yaml`
/// has them all.
fn imports_column(imports: &[String]) -> String {
    if imports.is_empty() {
        return "<none>".into();
    }
    let full = imports.join(",");
    if full.chars().count() <= IMPORTS_WIDTH {
        return full;
    }
    let packages: std::collections::BTreeSet<String> = imports
        .iter()
        .map(|i| match i.split_once('/') {
            Some((package, rest)) => match rest.rsplit_once('@') {
                Some((_, version)) => format!("{package}@{version}"),
                None => package.to_string(),
            },
            None => i.clone(),
        })
        .collect();
    let mut packages: Vec<String> = packages.into_iter().collect();
    // Stable: alphabetical within each group.
    packages.sort_by_key(|p| COMMON_PACKAGES.contains(&p.split('@').next().unwrap_or(p)));
    let mut out = String::new();
    for (shown, p) in packages.iter().enumerate() {
        let left = packages.len() - shown;
        let sep = if out.is_empty() { "" } else { "," };
        // Room for this one, and for saying how many are left after it.
        let more = if left > 1 {
            format!(",+{} more", left - 1).len()
        } else {
            0
        };
        if !out.is_empty() && out.len() + sep.len() + p.len() + more > IMPORTS_WIDTH {
            out.push_str(&format!(",+{left} more"));
            break;
        }
        out.push_str(sep);
        out.push_str(p);
    }
    out
}

/// Drops nulls, empty maps, empty lists and empty strings so YAML/JSON read like manifests.
pub fn prune(v: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let a: Vec<Value> = a.into_iter().filter_map(prune).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        Value::Object(m) => {
            let m: serde_json::Map<String, Value> = m
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other),
    }
}

/// YAML or JSON of objects; several objects become a `List`, as kubectl prints them.
pub fn structured(objects: &[Object], format: Format, single: bool) -> anyhow::Result<String> {
    let values: Vec<serde_json::Value> = objects
        .iter()
        .filter_map(|o| prune(o.to_manifest_value()))
        .collect();
    let value = if single && values.len() == 1 {
        values.into_iter().next().unwrap_or_default()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": values})
    };
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&value)?),
        _ => serde_yaml::to_string(&value)?,
    })
}

/// `token list`: a row per token, soonest to expire first.
pub fn tokens(tokens: &[flotilla_api::protocol::TokenInfo], now: Time) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let left = t.expires.since(now);
            let expires = if left <= 0 {
                format!("{} (expired)", t.expires)
            } else {
                format!("{} (in {})", t.expires, age(now, t.expires))
            };
            let uses = match (t.uses, t.max_uses) {
                (Some(n), Some(max)) => format!("{n}/{max}"),
                (Some(n), None) => n.to_string(),
                (None, _) => "<uncounted>".into(),
            };
            vec![
                t.id.clone(),
                t.kind.clone(),
                or_none(&t.description),
                expires,
                uses,
            ]
        })
        .collect();
    table(&["ID", "KIND", "DESCRIPTION", "EXPIRES", "USES"], &rows)
}

/// `cluster status`: a summary line, then one row per master.
pub fn cluster_status(
    s: &flotilla_api::protocol::ClusterStatus,
    unreachable: &[u64],
    format: Format,
) -> anyhow::Result<String> {
    match format {
        Format::Json => return Ok(serde_json::to_string_pretty(s)? + "\n"),
        Format::Yaml => return Ok(serde_yaml::to_string(s)?),
        Format::Table | Format::Wide => {}
    }
    let leader = s
        .leader
        .map(|l| l.to_string())
        .unwrap_or_else(|| "<none>".into());
    let mut out = format!(
        "cluster {}: leader {leader}, term {}, commit index {}\n",
        s.cluster, s.term, s.commit_index
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            let role = if unreachable.contains(&m.node_id) {
                "unreachable"
            } else if Some(m.node_id) == s.leader {
                "leader"
            } else if m.voter {
                "follower"
            } else {
                "learner"
            };
            let known = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            vec![
                m.node_id.to_string(),
                m.addr.clone(),
                role.to_string(),
                known(m.matched),
                known(m.lag),
            ]
        })
        .collect();
    out.push_str(&table(&["ID", "ADDRESS", "ROLE", "MATCHED", "LAG"], &rows));
    Ok(out)
}

/// The certificates section of `cluster status`: name, expiry, time left.
pub fn certificates(certs: &[flotilla_api::protocol::CertificateStatus], now: Time) -> String {
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            let v = flotilla_api::identity::Validity {
                not_before: c.not_before,
                not_after: c.not_after,
            };
            let mut left = v.left(now);
            if v.expires_soon(now) {
                left.push_str(" (renew!)");
            }
            vec![c.name.clone(), c.not_after.to_string(), left]
        })
        .collect();
    table(&["CERTIFICATE", "NOT-AFTER", "EXPIRES"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_endpoints_tables() {
        let svc: flotilla_api::objects::service::Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec: {selector: {app: web}, ports: [{name: http, port: 8080, targetPort: 80}, {name: raw, port: 9000}], hosts: [web.local]}",
        )
        .unwrap();
        let text = services(&[svc], true, Time(0)).to_string();
        assert!(text.contains("8080:80/TCP,9000/TCP"), "{text}");
        assert!(text.contains("web.local   <none>   None"), "{text}");
        let secure: flotilla_api::objects::service::Service = serde_yaml::from_str(
            "metadata: {name: shop, namespace: default}\nspec: {selector: {app: shop}, ports: [{port: 8443}], hosts: [shop.local, shop.local/api], tls: {secretName: shop-tls}}",
        )
        .unwrap();
        let shop = services(&[secure], true, Time(0)).to_string();
        assert!(
            shop.contains("shop.local,shop.local/api   shop-tls   None"),
            "{shop}"
        );
        assert!(
            text.contains("app=web") && text.contains("web.local") && text.contains("None"),
            "{text}"
        );
        let ep: flotilla_api::objects::service::Endpoints = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nendpoints:\n- {pod: a, node: n1, ready: true}\n- {pod: b, node: n2}\n- {pod: c, node: n1, ready: true}\n- {pod: d, node: n1, ready: true}\n- {pod: e, node: n2, ready: true}\n",
        )
        .unwrap();
        let text = endpoints(&[ep], Time(0)).to_string();
        assert!(text.contains("a@n1,c@n1,d@n1 + 1 more...   1"), "{text}");
        let empty: flotilla_api::objects::service::Endpoints =
            serde_yaml::from_str("metadata: {name: idle, namespace: default}").unwrap();
        assert!(endpoints(&[empty], Time(0)).to_string().contains("<none>"));
    }

    #[test]
    fn describe_says_where_each_mount_comes_from_and_what_the_pod_may_reach() {
        let pod: Pod = serde_yaml::from_str(
            "metadata: {name: p}\nspec:\n  module: m.wasm\n  volumes:\n  - {name: cfg, configMap: {name: app}}\n  - {name: data, persistent: {name: db, node: pi-1}}\n  - {name: tmp, emptyDir: {sizeLimit: 1Mi}}\n  volumeMounts:\n  - {name: cfg, mountPath: /etc/app}\n  - {name: data, mountPath: /var/db, subPath: v1}\n  - {name: tmp, mountPath: /tmp, readOnly: true}\n  network:\n    allow: [{host: 10.0.0.0/24, ports: [5432]}, {host: '*', protocol: UDP}]\n    listen: [{port: 8080}]\nstatus:\n  networkRefusals: {count: 3, last: TCP connect to 1.2.3.4:80}\n",
        )
        .unwrap();
        let text = describe_pod_capabilities(&pod);
        for want in [
            "  /etc/app from cfg (ro): ConfigMap app\n",
            "  /var/db from data (subPath v1) (rw): Persistent db on pi-1\n",
            "  /tmp from tmp (ro): EmptyDir (sizeLimit 1Mi)\n",
            "  to 10.0.0.0/24 port 5432/TCP\n",
            "  to * any port/UDP\n",
            "  listen on 8080/TCP\n",
            "Refused: 3 attempt(s) outside spec.network; last: TCP connect to 1.2.3.4:80\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let bare: Pod =
            serde_yaml::from_str("metadata: {name: p}\nspec: {module: m.wasm}").unwrap();
        assert_eq!(
            describe_pod_capabilities(&bare),
            "Mounts:  <none>\nNetwork: none (no spec.network)\n"
        );
    }

    #[test]
    fn tables_line_up() {
        let t = table(
            &["NAME", "STATUS"],
            &[
                vec!["a".into(), "Running".into()],
                vec!["longer".into(), "x".into()],
            ],
        );
        assert_eq!(t, "NAME     STATUS\na        Running\nlonger   x\n");
    }

    #[test]
    fn modules_show_whether_pods_use_them() {
        let module = |digest: &str| {
            let mut m = Module::default();
            m.spec.digest = digest.into();
            m.spec.size = 2048;
            m.spec.source = "app.wasm".into();
            m
        };
        let (used, unused) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        let mut items = [module(&used), module(&unused)];
        items[0].status.imports = vec!["wasi_snapshot_preview1".into()];
        let pods: Vec<String> = (1..=4).map(|i| format!("default/web-{i}")).collect();
        let users: ModuleUsers = [(used.clone(), pods)].into();
        let now = Time(0);
        let t = modules(&items, &users, false, now).to_string();
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["DIGEST", "SIZE", "SOURCE", "IN-USE", "AGE"]);
        assert_eq!(rows[1][3], "4");
        assert_eq!(rows[2][3], "no");
        let wide = modules(&items, &users, true, now).to_string();
        let rows: Vec<Vec<&str>> = wide
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        // (AGE is empty here: the last two columns are PODS and IMPORTS.)
        let last_two = |r: &[&str]| r[r.len() - 2..].join(" ");
        assert_eq!(last_two(&rows[0]), "PODS IMPORTS");
        assert_eq!(
            last_two(&rows[1]),
            "default/web-1,default/web-2,default/web-3,... wasi_snapshot_preview1"
        );
        assert_eq!(last_two(&rows[2]), "<none> <none>");
    }

    #[test]
    fn imports_are_shortened_by_package_then_cut() {
        let list = |s: &[&str]| s.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let p2 = |package: &str, names: &[&str]| {
            names
                .iter()
                .map(|n| format!("wasi:{package}/{n}@0.2.6"))
                .collect::<Vec<_>>()
        };
        let mut command = p2("cli", &["environment", "exit", "stderr", "stdin", "stdout"]);
        command.extend(p2("clocks", &["monotonic-clock"]));
        command.extend(p2("io", &["error", "poll", "streams"]));
        let mut sockets = command.clone();
        sockets.extend(p2("sockets", &["network", "tcp"]));
        let mut many = command.clone();
        for package in ["filesystem", "random", "sockets", "http", "keyvalue"] {
            many.extend(p2(package, &["types"]));
        }
        many.sort();
        // (imports, IMPORTS)
        let cases = [
            (list(&[]), "<none>".to_string()),
            (
                list(&["wasi_snapshot_preview1"]),
                "wasi_snapshot_preview1".to_string(),
            ),
            (
                list(&["wasi:sockets", "wasi_snapshot_preview1"]),
                "wasi:sockets,wasi_snapshot_preview1".to_string(),
            ),
            (
                command,
                "wasi:cli@0.2.6,wasi:clocks@0.2.6,wasi:io@0.2.6".to_string(),
            ),
            (
                sockets,
                "wasi:sockets@0.2.6,wasi:cli@0.2.6,wasi:clocks@0.2.6,+1 more".to_string(),
            ),
            (
                many,
                "wasi:filesystem@0.2.6,wasi:http@0.2.6,+6 more".to_string(),
            ),
        ];
        for (imports, want) in cases {
            let got = imports_column(&imports);
            assert_eq!(got, want, "{imports:?}");
            assert!(got.len() <= IMPORTS_WIDTH, "{got}");
        }
    }

    #[test]
    fn pod_status_shows_reasons_and_unknown() {
        let pod = |phase, reason: &str| {
            let mut p = Pod::default();
            p.status.phase = phase;
            p.status.reason = reason.into();
            p
        };
        let cases = [
            (pod(PodPhase::Running, ""), "Running"),
            (
                pod(PodPhase::Running, "CrashLoopBackOff"),
                "CrashLoopBackOff",
            ),
            (pod(PodPhase::Succeeded, "Completed"), "Completed"),
            (pod(PodPhase::Failed, "InvalidModule"), "InvalidModule"),
            (pod(PodPhase::Unknown, "NodeLost"), "Unknown"),
        ];
        for (p, want) in cases {
            assert_eq!(pod_status(&p), want, "{:?}", p.status);
        }
    }

    #[test]
    fn pods_show_ready_and_when_they_last_restarted() {
        let mut p = Pod::default();
        p.metadata.name = "web".into();
        p.metadata.creation_timestamp = Some(Time(0));
        p.status.phase = PodPhase::Running;
        p.status.restart_count = 2;
        p.status.last_state = Some(flotilla_api::objects::LastState {
            exit_code: Some(1),
            finished_at: Some(Time(3_580_000)),
            ..Default::default()
        });
        p.status.set_condition(flotilla_api::objects::PodCondition {
            type_: flotilla_api::objects::condition::READY.into(),
            status: true,
            ..Default::default()
        });
        let t = pods(&[p], false, Time(3_600_000));
        assert_eq!(
            t.to_string(),
            "NAMESPACE   NAME   READY   STATUS    RESTARTS      AGE\n            web    1/1     Running   2 (20s ago)   60m\n"
        );
    }

    #[test]
    fn prune_drops_empties() {
        let v = serde_json::json!({"a": null, "b": "", "c": [], "d": {"e": {}}, "f": 1});
        assert_eq!(prune(v), Some(serde_json::json!({"f": 1})));
    }
}
