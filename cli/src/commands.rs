//! The client commands: each connects to a master with the client config,
//! does one thing, and prints what happened the way kubectl would.

use crate::listing::{self, FieldSelector, Output, Shape};
use crate::output::{self, Format, Table};
use anyhow::{anyhow, bail, Context};
use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::{Identity, Validity};
use flotilla_api::manifest::{duplicates, hints, parse_manifests_numbered, Source};
use flotilla_api::net::{read_frame, Client, NetError};
use flotilla_api::objects::{is_digest, module_name, Deployment, ReplicaSet};
use flotilla_api::protocol::{
    ApiError, ErrorCode, EventType, ListCollector, ListOptions, ListStreamError, LogOptions,
    Propagation, Request, Response, WatchOptions, ALPN, MAX_MODULE_SIZE,
};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Reads the client config file.
pub(crate) fn read_config(config: &Path) -> anyhow::Result<ClientConfigFile> {
    let text = std::fs::read_to_string(config).map_err(|e| {
        anyhow!(
            "cannot read the client config {}: {e}\n  start a master (`flotilla master` or `flotilla up`) — it writes one — or pass --config / set FLOTILLA_CONFIG",
            config.display()
        )
    })?;
    ClientConfigFile::parse(&text)
        .map_err(|e| anyhow!("{} is not a Flotilla client config: {e}", config.display()))
}

/// Connects to the first master in the config that answers.
pub async fn connect(config: &Path) -> anyhow::Result<Client> {
    let cfg = read_config(config)?;
    let validity = Validity::of_pem(&cfg.cert_pem).ok();
    let now = Time::now();
    let tls = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
        .map_err(|e| anyhow!("{}: {e}", config.display()))?;
    match Client::connect(&cfg.masters, tls, "flotilla-cli").await {
        Ok(c) => {
            remember_masters(config, &cfg, &c);
            // Two thirds into its lifetime, the certificate is renewed on
            // the way (as nodes renew theirs); the config keeps working
            // for as long as it is used now and then.
            if let Some(v) = validity.filter(|v| !v.expired(now) && v.renewal_due(now)) {
                match renew_config(config, &c).await {
                    Ok((who, new)) => eprintln!(
                        "renewed the certificate of {who} in {}: valid until {} ({})",
                        config.display(),
                        new.not_after,
                        new.left(Time::now())
                    ),
                    Err(e) => eprintln!(
                        "warning: the certificate in {} expires {} ({}) and could not be renewed: {e:#}; run `flotilla config renew`",
                        config.display(),
                        v.left(now),
                        v.not_after
                    ),
                }
            }
            Ok(c)
        }
        Err(e) => match validity.filter(|v| v.expired(now)) {
            Some(v) => Err(explain(e).context(format!(
                "the certificate in {} expired on {} and masters refuse it; get a new config from an admin, \
                 or restart a `flotilla master` that writes this config (it renews the admin config it wrote)",
                config.display(),
                v.not_after
            ))),
            None => Err(explain(e)),
        },
    }
}

/// A connection for shell completion: no warnings on stderr, the config
/// left as it is.
pub async fn connect_quietly(config: &Path) -> anyhow::Result<Client> {
    let cfg = read_config(config)?;
    let tls = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
        .map_err(|e| anyhow!("{}: {e}", config.display()))?;
    Client::connect(&cfg.masters, tls, "flotilla-cli")
        .await
        .map_err(explain)
}

/// The config's master list after `answered` answered and listed the
/// cluster's masters in `told`: the one that answered first (the next
/// command tries it first, so a master that is down costs nothing), then
/// the others known, then any the cluster knows that the config did not.
/// None when nothing changes.
fn masters_after(known: &[String], answered: &str, told: &[String]) -> Option<Vec<String>> {
    let mut all = vec![answered.to_string()];
    for m in known.iter().chain(told) {
        if !all.contains(m) {
            all.push(m.clone());
        }
    }
    (all != known).then_some(all)
}

/// Keeps what a connection taught about the masters in the config file, so
/// that users need not edit it as masters come and go. A config that cannot
/// be written (read-only, say) is simply used as it is.
fn remember_masters(config: &Path, cfg: &ClientConfigFile, client: &Client) {
    let Some(masters) = masters_after(&cfg.masters, &client.addr, &client.hello.masters) else {
        return;
    };
    // Re-read: keep whatever else changed in the file meanwhile.
    let Ok(mut current) = read_config(config) else {
        return;
    };
    if current.masters != cfg.masters {
        return;
    }
    current.masters = masters;
    let _ = flotilla_api::net::write_private_file(config, &current.render());
}

/// Turns transport errors into advice.
fn explain(e: NetError) -> anyhow::Error {
    match e {
        NetError::Connection(quinn::ConnectionError::ConnectionClosed(c)) if c.reason.is_empty() => anyhow!(
            "the master closed the connection during the handshake: {c}; is the client certificate in your config from this cluster?"
        ),
        NetError::Connection(quinn::ConnectionError::TransportError(t)) => {
            anyhow!("TLS handshake with the master failed: {t}; check that your config belongs to this cluster")
        }
        NetError::Api(ApiError { code, message }) => anyhow!("{message} ({code:?})"),
        other => anyhow!("{other}"),
    }
}

pub(crate) async fn call(client: &Client, req: &Request) -> anyhow::Result<Response> {
    client.call(req).await.map_err(explain)
}

/// Parses durations like `500ms`, `30s`, `10m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a duration; write e.g. 30s, 10m, 24h, 7d"))?;
    let unit_secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{s:?} is not a duration; write e.g. 30s, 10m, 24h, 7d"),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| anyhow!("{s:?} is longer than any duration Flotilla keeps"))
}

/// Parses `key=value` labels (a node's `--label`).
#[cfg(feature = "node")]
pub fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for i in items {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| anyhow!("label {i:?} must be key=value"))?;
        if !flotilla_api::manifest::is_label_key(k) || !flotilla_api::manifest::is_label_value(v) {
            bail!("label {i:?} is not a valid key=value label");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
    }
}

/// The manifest files `-f` names: files as they are, `-` for standard
/// input, and for a directory the `.yaml`, `.yml` and `.json` files in it,
/// by name (with `recursive`, those of its subdirectories too, as kubectl's
/// `-R`).
pub fn expand_files(given: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow!("cannot read the directory {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if recursive {
                    walk(&p, recursive, out)?;
                }
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for f in given {
        if f != Path::new("-") && f.is_dir() {
            let before = out.len();
            walk(f, recursive, &mut out)?;
            if out.len() == before {
                bail!(
                    "{} holds no .yaml, .yml or .json file{}",
                    f.display(),
                    if recursive {
                        ""
                    } else {
                        " (add -R to read its subdirectories)"
                    }
                );
            }
        } else {
            out.push(f.clone());
        }
    }
    Ok(out)
}

/// Reads and validates every file first: a bad document anywhere changes
/// nothing. Each object comes with its file and its document number there.
/// The objects of every file, all or nothing, and the hints to print beside
/// applying them ([`flotilla_api::manifest::hints`]).
type Loaded = (Vec<(PathBuf, usize, Object)>, Vec<String>);

fn load_manifests(files: &[PathBuf]) -> anyhow::Result<Loaded> {
    let mut all = Vec::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for f in files {
        let text = read_input(f)?;
        notes.extend(
            hints(&text).into_iter().map(|(document, hint)| {
                format!("hint: {}: document {document}: {hint}", f.display())
            }),
        );
        match parse_manifests_numbered(&text) {
            Ok(objs) => all.extend(objs.into_iter().map(|(n, o)| (f.clone(), n, o))),
            Err(errs) => problems.extend(errs.iter().map(|e| format!("{}: {e}", f.display()))),
        }
    }
    if !problems.is_empty() {
        bail!(
            "invalid manifest, nothing was applied:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok((all, notes))
}

/// Refuses two documents that name one object: the second would overwrite
/// the first half-way through an apply that must be all or nothing.
fn refuse_duplicates(objects: &[(PathBuf, usize, Object)]) -> anyhow::Result<()> {
    let sources: Vec<Source> = objects
        .iter()
        .map(|(file, document, _)| Source {
            file: file.display().to_string(),
            document: *document,
        })
        .collect();
    let found = duplicates(sources.iter().zip(objects.iter().map(|(_, _, o)| o)));
    if found.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    bail!(
        "invalid manifest, nothing was applied:\n  {}",
        lines.join("\n  ")
    )
}

/// A local module file, read once to hash it; its bytes are read again,
/// a chunk at a time, only to upload it.
#[derive(Debug, Clone)]
struct LocalModule {
    path: PathBuf,
    digest: String,
    size: u64,
    /// The file name, kept with the module for people.
    source: String,
}

/// Where a pod's `spec.module` path points, relative to its manifest.
fn module_path(manifest: &Path, module: &str) -> PathBuf {
    let base = if manifest == Path::new("-") {
        Path::new(".")
    } else {
        manifest.parent().unwrap_or(Path::new("."))
    };
    base.join(module)
}

/// Opens a module file, refusing anything but a regular file: reading a
/// FIFO would wait for a writer forever, and a device such as /dev/zero
/// never ends.
fn open_regular(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || {
        anyhow!(
            "spec.module: {} is not a regular file (a directory, FIFO or device cannot be a module)",
            path.display()
        )
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow!("spec.module: cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    // Non-blocking, so a file swapped for a FIFO since the check cannot hang the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| anyhow!("spec.module: cannot read {}: {e}", path.display()))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        _ => Err(not_regular()),
    }
}

/// Reads a module file once, in chunks: its digest and size, checked to be
/// Wasm and within the cluster's limit however the file lies about its size.
fn hash_module(path: &Path) -> anyhow::Result<LocalModule> {
    use sha2::Digest as _;
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let (mut size, mut head) = (0u64, Vec::<u8>::with_capacity(4));
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| anyhow!("spec.module: cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if head.len() < 4 {
            head.extend(buf[..n].iter().take(4 - head.len()));
        }
        size += n as u64;
        if size > MAX_MODULE_SIZE {
            bail!(
                "spec.module: {} is larger than {MAX_MODULE_SIZE} bytes, the largest module the cluster accepts",
                path.display()
            );
        }
        hasher.update(&buf[..n]);
    }
    if head.as_slice() != b"\0asm" {
        bail!("spec.module: {} is not a WebAssembly file (build it for wasm32-wasip2 or wasm32-wasip1)", path.display());
    }
    Ok(LocalModule {
        path: path.to_path_buf(),
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
        source: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

/// Uploads a module unless the master has it, streaming the file in chunks
/// (never whole in memory); shows progress for big ones. The file must
/// still hold the bytes that were hashed.
async fn upload(client: &Client, m: &LocalModule) -> anyhow::Result<bool> {
    use sha2::Digest as _;
    use std::io::Read;
    let source = &m.source;
    let req = Request::PutModule {
        digest: m.digest.clone(),
        size: m.size,
        source: source.clone(),
    };
    let (mut send, mut recv) = client.open(&req).await.map_err(explain)?;
    match read_frame::<Response>(&mut recv).await.map_err(explain)? {
        Some(Response::ModuleStored { .. }) => return Ok(false),
        Some(Response::Ok) => {}
        Some(Response::Error(e)) => bail!("uploading {source}: {}", e.message),
        other => bail!("uploading {source}: unexpected answer {other:?}"),
    }
    let changed = || {
        anyhow!(
            "uploading {source}: {} changed while it was uploaded; apply again",
            m.path.display()
        )
    };
    let mut file = open_regular(&m.path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let show = m.size > (1 << 20) && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut done = 0u64;
    while done < m.size {
        let want = buf
            .len()
            .min(usize::try_from(m.size - done).unwrap_or(usize::MAX));
        let n = file
            .read(&mut buf[..want])
            .map_err(|e| anyhow!("uploading {source}: {e}"))?;
        if n == 0 {
            return Err(changed());
        }
        hasher.update(&buf[..n]);
        send.write_all(&buf[..n])
            .await
            .map_err(|e| anyhow!("uploading {source}: {e}"))?;
        done += n as u64;
        if show {
            let pct = done * 100 / m.size;
            let bar: String = (0..30)
                .map(|j| if j * 100 / 30 < pct { '#' } else { '-' })
                .collect();
            eprint!("\r  uploading {source} [{bar}] {pct:>3}%");
        }
    }
    if show {
        eprintln!();
    }
    if format!("sha256:{}", hex::encode(hasher.finalize())) != m.digest {
        // The master checks the digest too and stores nothing on a mismatch.
        let _ = send.reset(0u32.into());
        return Err(changed());
    }
    let _ = send.finish();
    match read_frame::<Response>(&mut recv).await.map_err(explain)? {
        Some(Response::ModuleStored { .. }) => Ok(true),
        Some(Response::Error(e)) => bail!("uploading {source}: {}", e.message),
        other => bail!("uploading {source}: unexpected answer {other:?}"),
    }
}

/// `apply --dry-run`: what would be done, checked by the client alone
/// (manifests, modules, what exists) or by the master too (admission, who
/// may), with nothing uploaded or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DryRun {
    None,
    Client,
    Server,
}

/// The objects of manifest files as `apply` would send them: validated,
/// `-n` applied, no two naming one object, local modules read and named by
/// their digests. With the modules to upload, the pods whose module is a
/// local file, and the hints to print.
struct Prepared {
    objects: Vec<(PathBuf, usize, Object)>,
    modules: BTreeMap<PathBuf, LocalModule>,
    uploading_pods: Vec<usize>,
    notes: Vec<String>,
}

fn prepare(files: &[PathBuf], namespace: Option<&str>) -> anyhow::Result<Prepared> {
    let (mut objects, notes) = load_manifests(files)?;
    if let Some(ns) = namespace {
        for (_, _, obj) in &mut objects {
            if obj.kind().namespaced() {
                obj.meta_mut().namespace = ns.to_string();
            }
        }
    }
    // After the override: it can make two documents name one object.
    refuse_duplicates(&objects)?;
    // Resolve local modules before connecting, so a missing file changes
    // nothing either. Each file is read once, however many pods use it.
    let mut hashed: BTreeMap<PathBuf, LocalModule> = BTreeMap::new();
    // Pods whose module is a local file: the ones whose apply would upload.
    let mut uploading_pods = Vec::new();
    for (i, (file, _, obj)) in objects.iter_mut().enumerate() {
        let what = format!("{}/{}", obj.kind().as_str().to_lowercase(), obj.meta().name);
        let is_pod = obj.kind() == Kind::Pod;
        if let Some(module) = module_of(obj) {
            if !is_digest(module) {
                if is_pod {
                    uploading_pods.push(i);
                }
                let path = module_path(file, module);
                let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                let m = match hashed.get(&key) {
                    Some(m) => m.clone(),
                    None => {
                        let m = hash_module(&path).with_context(|| what.clone())?;
                        hashed.insert(key, m.clone());
                        m
                    }
                };
                *module = m.digest;
            }
        }
    }
    Ok(Prepared {
        objects,
        modules: hashed,
        uploading_pods,
        notes,
    })
}

/// `obj` as an update of `current` would write it: over its version and
/// uid, keeping the finalizers and (for a pod) the fields the master sets.
fn as_update(obj: &Object, current: &Object) -> Object {
    let mut updated = obj.clone();
    let cm = current.meta();
    let um = updated.meta_mut();
    um.resource_version = cm.resource_version;
    um.uid = cm.uid.clone();
    // The system's finalizers stay; the manifest's own are the ones it
    // lists (removing one lets a deleted object go).
    for f in cm.finalizers.iter().filter(|f| is_system_finalizer(f)) {
        if !um.finalizers.contains(f) {
            um.finalizers.push(f.clone());
        }
    }
    if let (Object::Pod(new), Object::Pod(old)) = (&mut updated, current) {
        // The binding and the priority are the master's; a manifest without them keeps them.
        new.spec.keep_server_fields(&old.spec);
    }
    updated
}

/// The object stored under `obj`'s kind, namespace and name, if any.
async fn current_of(client: &Client, obj: &Object) -> anyhow::Result<Option<Object>> {
    let m = obj.meta();
    lookup(client, obj.kind(), &m.namespace, &m.name).await
}

/// The object of `kind` named `name` in `namespace`, or None if there is
/// none (any other failure is an error).
pub(crate) async fn lookup(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Option<Object>> {
    let req = Request::Get {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        stale: false,
    };
    match client.call(&req).await {
        Ok(Response::Object(o)) => Ok(Some(o)),
        Ok(other) => bail!("unexpected answer {other:?}"),
        Err(NetError::Api(ApiError {
            code: ErrorCode::NotFound,
            ..
        })) => Ok(None),
        Err(e) => Err(explain(e)),
    }
}

/// An object as `diff` compares it: its manifest without its status and
/// the metadata the master keeps (uid, versions, creation time), a
/// Secret's values hidden as the master shows them.
fn comparable(o: &Object) -> String {
    let o = match o {
        Object::Secret(s) => Object::Secret(s.redacted()),
        other => other.clone(),
    };
    let mut v = o.to_manifest_value();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in ["uid", "resourceVersion", "generation", "creationTimestamp"] {
            meta.remove(k);
        }
    }
    output::prune(v)
        .and_then(|v| serde_yaml::to_string(&v).ok())
        .unwrap_or_default()
}

/// `flotilla diff -f FILE`: what `apply` would change, as a unified diff of
/// each object as it is and as it would be; exit 1 when anything differs,
/// as `kubectl diff` and `diff` do.
pub async fn diff(
    config: &Path,
    files: &[PathBuf],
    namespace: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let prepared = prepare(files, namespace)?;
    let client = connect(config).await?;
    let mut differs = false;
    for (_, _, obj) in &prepared.objects {
        let current = current_of(&client, obj).await?;
        let live = current.as_ref().map(comparable).unwrap_or_default();
        let applied = comparable(&match &current {
            Some(c) => as_update(obj, c),
            None => obj.clone(),
        });
        let m = obj.meta();
        let name = if m.namespace.is_empty() {
            format!("{}/{}", obj.kind().as_str().to_lowercase(), m.name)
        } else {
            format!(
                "{}/{}/{}",
                obj.kind().as_str().to_lowercase(),
                m.namespace,
                m.name
            )
        };
        let d = crate::diff::unified(
            &format!("live/{name}"),
            &format!("applied/{name}"),
            &live,
            &applied,
        );
        if !d.is_empty() {
            differs = true;
            print!("{d}");
        }
    }
    Ok(if differs {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn apply(
    config: &Path,
    files: &[PathBuf],
    namespace: Option<&str>,
    create_namespace: bool,
    dry_run: DryRun,
) -> anyhow::Result<ExitCode> {
    let Prepared {
        objects,
        modules: hashed,
        uploading_pods,
        notes,
    } = prepare(files, namespace)?;
    let client = connect(config).await?;
    if create_namespace && dry_run == DryRun::None {
        let mut wanted: Vec<String> = objects
            .iter()
            .filter(|(_, _, o)| o.kind().namespaced())
            .map(|(_, _, o)| o.meta().namespace.clone())
            .collect();
        wanted.sort();
        wanted.dedup();
        for ns in wanted {
            ensure_namespace(&client, &ns).await?;
        }
    }
    // A pod's spec cannot change once created: refused here, before any
    // module is uploaded, rather than by the master after.
    let mut changed = Vec::new();
    for &i in &uploading_pods {
        let Object::Pod(pod) = &objects[i].2 else {
            continue;
        };
        let m = &pod.metadata;
        let current = client
            .call(&Request::Get {
                kind: Kind::Pod,
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                stale: false,
            })
            .await;
        if let Ok(Response::Object(Object::Pod(old))) = current {
            if !same_pod_spec(&old.spec, &pod.spec) {
                changed.push(format!(
                    "pod/{} (namespace {}): its spec cannot change once created (only labels and annotations can): \
                     delete it and apply again (`flotilla delete pod {} -n {} && flotilla apply -f {}`), \
                     or run it from a Deployment, which replaces its pods when its template changes",
                    m.name,
                    m.namespace,
                    m.name,
                    m.namespace,
                    objects[i].0.display()
                ));
            }
        }
    }
    if !changed.is_empty() {
        bail!(
            "nothing was applied and no module uploaded:\n  {}",
            changed.join("\n  ")
        );
    }
    let mut modules: Vec<LocalModule> = hashed.into_values().collect();
    modules.sort_by(|a, b| a.digest.cmp(&b.digest));
    modules.dedup_by(|a, b| a.digest == b.digest);
    if dry_run != DryRun::None {
        let digests: Vec<String> = modules.iter().map(|m| m.digest.clone()).collect();
        let mark = if dry_run == DryRun::Server {
            "(server dry run)"
        } else {
            "(dry run)"
        };
        for (_, _, obj) in &objects {
            let what = format!("{}/{}", obj.kind().as_str().to_lowercase(), obj.meta().name);
            let current = current_of(&client, obj).await?;
            let (verb, update) = match &current {
                None => ("created", None),
                Some(c) if same_desired(c, obj) => ("unchanged", None),
                Some(c) => ("configured", Some(as_update(obj, c))),
            };
            if dry_run == DryRun::Server && verb != "unchanged" {
                let req = Request::DryRun {
                    update: update.is_some(),
                    object: update.unwrap_or_else(|| obj.clone()),
                    modules: digests.clone(),
                };
                call(&client, &req)
                    .await
                    .with_context(|| format!("applying {what} {mark}"))?;
            }
            println!("{what} {verb} {mark}");
        }
        for note in notes {
            eprintln!("{note}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for m in &modules {
        if upload(&client, m).await? {
            eprintln!(
                "module/{} uploaded ({}, {} bytes)",
                &module_name(&m.digest)[..19],
                m.source,
                m.size
            );
        }
    }
    for (_, _, obj) in objects {
        let what = format!("{}/{}", obj.kind().as_str().to_lowercase(), obj.meta().name);
        match client.call(&Request::Create(obj.clone())).await {
            Ok(_) => println!("{what} created"),
            Err(NetError::Api(ApiError {
                code: ErrorCode::AlreadyExists,
                ..
            })) => {
                let m = obj.meta();
                let current = match call(
                    &client,
                    &Request::Get {
                        kind: obj.kind(),
                        namespace: m.namespace.clone(),
                        name: m.name.clone(),
                        stale: false,
                    },
                )
                .await?
                {
                    Response::Object(o) => o,
                    other => bail!("unexpected answer {other:?}"),
                };
                if same_desired(&current, &obj) {
                    println!("{what} unchanged");
                    continue;
                }
                call(&client, &Request::Update(as_update(&obj, &current))).await?;
                println!("{what} configured");
            }
            Err(e) => return Err(explain(e).context(format!("applying {what}"))),
        }
    }
    for note in notes {
        eprintln!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates the namespace `ns` unless it exists (`apply --create-namespace`).
async fn ensure_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let get = Request::Get {
        kind: Kind::Namespace,
        namespace: String::new(),
        name: ns.to_string(),
        stale: false,
    };
    match client.call(&get).await {
        Ok(_) => return Ok(()),
        Err(NetError::Api(ApiError {
            code: ErrorCode::NotFound,
            ..
        })) => {}
        Err(e) => return Err(explain(e).context(format!("reading namespace/{ns}"))),
    }
    let create = Request::Create(Object::Namespace(flotilla_api::objects::Namespace::named(
        ns,
    )));
    match client.call(&create).await {
        Ok(_) => println!("namespace/{ns} created"),
        Err(NetError::Api(ApiError {
            code: ErrorCode::AlreadyExists,
            ..
        })) => {}
        Err(e) => return Err(explain(e).context(format!("creating namespace/{ns}"))),
    }
    Ok(())
}

/// `create namespace NAME`: makes an empty namespace.
pub async fn create_namespace(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let ns = flotilla_api::objects::Namespace::named(name);
    let errors = flotilla_api::manifest::validate(&Object::Namespace(ns.clone()));
    if let Some(e) = errors.first() {
        bail!("{e}");
    }
    let client = connect(config).await?;
    call(&client, &Request::Create(Object::Namespace(ns))).await?;
    println!("namespace/{name} created");
    Ok(ExitCode::SUCCESS)
}

/// `create configmap NAME`: a ConfigMap from literals and files (UTF-8
/// files go to `data`, others to `binaryData`).
pub async fn create_config_map(
    config: &Path,
    name: &str,
    namespace: &str,
    literals: &[String],
    files: &[String],
) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let mut cm = flotilla_api::objects::ConfigMap {
        metadata: flotilla_api::ObjectMeta::named(namespace, name),
        ..Default::default()
    };
    for (key, bytes) in key_values(literals, files)? {
        match String::from_utf8(bytes) {
            Ok(text) => {
                cm.data.insert(key, text);
            }
            Err(e) => {
                cm.binary_data.insert(
                    key,
                    base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                );
            }
        }
    }
    create_object(config, Object::ConfigMap(cm), "configmap", name).await
}

/// The module a manifest's object runs: a pod's, or its template's.
fn module_of(obj: &mut Object) -> Option<&mut String> {
    match obj {
        Object::Pod(p) => Some(&mut p.spec.module),
        Object::ReplicaSet(rs) => Some(&mut rs.spec.template.spec.module),
        Object::Deployment(d) => Some(&mut d.spec.template.spec.module),
        Object::DaemonSet(d) => Some(&mut d.spec.template.spec.module),
        Object::Job(j) => Some(&mut j.spec.template.spec.module),
        Object::CronJob(c) => Some(&mut c.spec.job_template.spec.template.spec.module),
        _ => None,
    }
}

/// Finalizers the master adds and removes itself.
fn is_system_finalizer(f: &str) -> bool {
    f == flotilla_api::meta::FOREGROUND_DELETION || f == flotilla_api::meta::NAMESPACE_FINALIZER
}

/// Whether a manifest's pod spec (`wanted`) asks for what the stored one
/// has, leaving aside the fields the master sets (binding, priority).
fn same_pod_spec(
    stored: &flotilla_api::objects::PodSpec,
    wanted: &flotilla_api::objects::PodSpec,
) -> bool {
    let mut wanted = wanted.clone();
    wanted.keep_server_fields(stored);
    wanted == *stored
}

fn same_desired(a: &Object, b: &Object) -> bool {
    let own = |o: &Object| -> Vec<String> {
        let mut f: Vec<String> = o
            .meta()
            .finalizers
            .iter()
            .filter(|f| !is_system_finalizer(f))
            .cloned()
            .collect();
        f.sort();
        f
    };
    let same_meta = a.meta().labels == b.meta().labels
        && a.meta().annotations == b.meta().annotations
        && own(a) == own(b);
    match (a, b) {
        (Object::Deployment(x), Object::Deployment(y)) => same_meta && x.spec == y.spec,
        (Object::ReplicaSet(x), Object::ReplicaSet(y)) => same_meta && x.spec == y.spec,
        (Object::DaemonSet(x), Object::DaemonSet(y)) => same_meta && x.spec == y.spec,
        (Object::Job(x), Object::Job(y)) => same_meta && x.spec == y.spec,
        (Object::CronJob(x), Object::CronJob(y)) => same_meta && x.spec == y.spec,
        (Object::Pod(x), Object::Pod(y)) => same_meta && same_pod_spec(&x.spec, &y.spec),
        (Object::Namespace(_), Object::Namespace(_)) => same_meta,
        (Object::ConfigMap(x), Object::ConfigMap(y)) => {
            same_meta
                && x.data == y.data
                && x.binary_data == y.binary_data
                && x.immutable == y.immutable
        }
        _ => false,
    }
}

/// The Secrets among `objs` read again with their values (admins only).
pub(crate) async fn reveal_secrets(
    client: &Client,
    objs: Vec<Object>,
    stale: bool,
) -> anyhow::Result<Vec<Object>> {
    let mut out = Vec::with_capacity(objs.len());
    for o in objs {
        let m = o.meta();
        let req = Request::RevealSecret {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            stale,
        };
        match call(client, &req).await? {
            Response::Object(o) => out.push(o),
            other => bail!("unexpected answer {other:?}"),
        }
    }
    Ok(out)
}

/// `create secret generic NAME`: a Secret from literals and files (the
/// master seals the values before it stores them).
pub async fn create_secret(
    config: &Path,
    name: &str,
    namespace: &str,
    literals: &[String],
    files: &[String],
) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let mut secret = flotilla_api::objects::Secret {
        metadata: flotilla_api::ObjectMeta::named(namespace, name),
        ..Default::default()
    };
    for (key, bytes) in key_values(literals, files)? {
        secret
            .data
            .insert(key, base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    create_object(config, Object::Secret(secret), "secret", name).await
}

/// `create secret tls NAME --cert FILE --key FILE`: a Secret of type
/// `kubernetes.io/tls` with the PEM chain in `tls.crt` and its key in
/// `tls.key`, checked here to be a usable pair.
pub async fn create_tls_secret(
    config: &Path,
    name: &str,
    namespace: &str,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    use flotilla_api::objects::service::{TLS_CERT_KEY, TLS_KEY_KEY, TLS_SECRET_TYPE};
    let read = |flag: &str, p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{flag} {}: {e}; give a PEM file", p.display()))
    };
    let (cert_pem, key_pem) = (read("--cert", cert)?, read("--key", key)?);
    flotilla_api::tls::serving_key(&cert_pem, &key_pem).map_err(|e| {
        anyhow::anyhow!(
            "--cert {} and --key {} are not a usable pair: {e}; give the PEM \
             certificate chain and its private key",
            cert.display(),
            key.display()
        )
    })?;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t.as_bytes());
    let secret = flotilla_api::objects::Secret {
        metadata: flotilla_api::ObjectMeta::named(namespace, name),
        type_: TLS_SECRET_TYPE.to_string(),
        data: [
            (TLS_CERT_KEY.to_string(), b64(&cert_pem)),
            (TLS_KEY_KEY.to_string(), b64(&key_pem)),
        ]
        .into(),
        ..Default::default()
    };
    create_object(config, Object::Secret(secret), "secret", name).await
}

/// The keys and values of `--from-literal KEY=VALUE` and `--from-file
/// [KEY=]PATH`, each key once.
fn key_values(
    literals: &[String],
    files: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    for l in literals {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--from-literal {l:?}: write KEY=VALUE");
        };
        if out.insert(k.to_string(), v.as_bytes().to_vec()).is_some() {
            bail!("key {k:?} is given twice");
        }
    }
    for f in files {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), PathBuf::from(p)),
            None => {
                let path = PathBuf::from(f);
                let key = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow!("--from-file {f:?}: not a file name"))?;
                (key, path)
            }
        };
        let bytes = std::fs::read(&path)
            .with_context(|| format!("--from-file: reading {}", path.display()))?;
        if out.insert(key.clone(), bytes).is_some() {
            bail!("key {key:?} is given twice");
        }
    }
    Ok(out)
}

/// Validates `object` here, creates it and says so.
pub(crate) async fn create_object(
    config: &Path,
    object: Object,
    what: &str,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    create_on(&client, object, what, name, "created").await
}

/// Checks `object` and creates it over `client`, saying `done` (`created`,
/// `exposed`) when it is.
pub(crate) async fn create_on(
    client: &Client,
    object: Object,
    what: &str,
    name: &str,
    done: &str,
) -> anyhow::Result<ExitCode> {
    let errors = flotilla_api::manifest::validate(&object);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("{}", list.join("; "));
    }
    call(client, &Request::Create(object)).await?;
    println!("{what}/{name} {done}");
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// What to get: a kind (`pods`), kinds (`pod,node`), a kind and names
    /// (`pods a b`), or KIND/NAME for each (`pods/a nodes/n1`). Kinds:
    /// pods (po), deployments (deploy), replicasets (rs), daemonsets (ds),
    /// jobs (job), cronjobs (cj), nodes (no), services (svc), endpoints
    /// (ep), configmaps (cm), secrets, events (ev), namespaces (ns),
    /// modules, priorityclasses (pc); or `all` (the namespace's pods and
    /// workloads).
    #[arg(required = true, value_name = "KIND[,KIND…] [NAME…] | KIND/NAME…", add = clap_complete::engine::ArgValueCompleter::new(crate::complete::Objects))]
    targets: Vec<String>,
    /// table, wide, json, yaml, name, jsonpath=TEMPLATE or
    /// custom-columns=HEADER:PATH,…
    #[arg(short, long, default_value = "table", value_parser = Output::parse)]
    output: Output,
    #[arg(short, long, default_value_t = crate::default_namespace())]
    namespace: String,
    /// Every namespace (and a NAMESPACE column).
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    /// Field selector, e.g. status.phase=Running,spec.nodeName!=pi-1: any
    /// field of the manifest, compared as text.
    #[arg(long, default_value = "")]
    field_selector: String,
    /// Sort by a field, as a JSONPath: .metadata.creationTimestamp,
    /// .status.restartCount, {.metadata.name}.
    #[arg(long)]
    sort_by: Option<String>,
    /// A LABELS column.
    #[arg(long)]
    show_labels: bool,
    /// A column for each of these label keys (comma-separated, repeatable).
    #[arg(short = 'L', long = "label-columns", value_delimiter = ',')]
    label_columns: Vec<String>,
    /// Tables without their header.
    #[arg(long)]
    no_headers: bool,
    /// After listing, keep printing changes: a row when an object is added
    /// or changes what its row shows, marked `(deleted)` when it goes.
    #[arg(short, long)]
    watch: bool,
    /// With -w, an EVENT column first: ADDED, MODIFIED or DELETED.
    #[arg(long, requires = "watch")]
    output_watch_events: bool,
    /// Read the answering master's copy without confirming with the leader:
    /// works without a majority of masters, but may miss the latest writes.
    #[arg(long)]
    stale: bool,
    /// Print Secrets' values (base64 in `data`, as applied) instead of
    /// `<hidden: N bytes>`; admins only.
    #[arg(long)]
    show_secrets: bool,
}

fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    listing::parse_kind(s)
}

/// The objects of type `T` among `objs`.
fn typed<T: flotilla_api::objects::Typed>(objs: &[Object]) -> Vec<T> {
    objs.iter()
        .filter_map(|o| o.as_kind::<T>().cloned())
        .collect()
}

/// The table `get` prints for `objs`.
fn render_table(kind: Kind, objs: &[Object], wide: bool, users: &output::ModuleUsers) -> Table {
    let now = Time::now();
    match kind {
        Kind::Pod => output::pods(&typed::<flotilla_api::Pod>(objs), wide, now),
        Kind::Node => output::nodes(&typed::<flotilla_api::Node>(objs), wide, now),
        Kind::Deployment => output::deployments(&typed::<Deployment>(objs), wide, now),
        Kind::DaemonSet => {
            output::daemon_sets(&typed::<flotilla_api::objects::DaemonSet>(objs), wide, now)
        }
        Kind::Job => output::jobs(&typed::<flotilla_api::objects::Job>(objs), wide, now),
        Kind::CronJob => {
            output::cron_jobs(&typed::<flotilla_api::objects::CronJob>(objs), wide, now)
        }
        Kind::Event => output::events(
            &typed::<flotilla_api::objects::event::Event>(objs),
            wide,
            now,
        ),
        Kind::ConfigMap => {
            output::config_maps(&typed::<flotilla_api::objects::ConfigMap>(objs), now)
        }
        Kind::Secret => output::secrets(&typed::<flotilla_api::objects::Secret>(objs), now),
        Kind::Service => output::services(
            &typed::<flotilla_api::objects::service::Service>(objs),
            wide,
            now,
        ),
        Kind::Endpoints => output::endpoints(
            &typed::<flotilla_api::objects::service::Endpoints>(objs),
            now,
        ),
        Kind::Namespace => {
            output::namespaces(&typed::<flotilla_api::objects::Namespace>(objs), now)
        }
        Kind::ReplicaSet => output::replica_sets(&typed::<ReplicaSet>(objs), wide, now),
        Kind::PriorityClass => {
            output::priority_classes(&typed::<flotilla_api::objects::PriorityClass>(objs), now)
        }
        Kind::User => output::users(&typed::<flotilla_api::objects::User>(objs), now),
        _ => output::modules(
            &objs
                .iter()
                .filter_map(|o| {
                    if let Object::Module(m) = o {
                        Some(m.clone())
                    } else {
                        None
                    }
                })
                .collect::<Vec<_>>(),
            users,
            wide,
            now,
        ),
    }
}

/// What `get -w` prints as a table: rows aligned with those before them
/// (columns keep their widths, and widen only for a wider cell), one row
/// per change that shows (an update that leaves the row as it was, but for
/// its age, prints nothing), deletions marked.
struct WatchTable {
    /// The widths so far; empty until the header is printed.
    widths: Vec<usize>,
    /// Which column is AGE (left out when comparing rows).
    age: Option<usize>,
    /// The row each object last printed, by namespace and name.
    last: HashMap<(String, String), Vec<String>>,
    /// Whether an EVENT column comes first (`--output-watch-events`).
    events: bool,
}

impl WatchTable {
    fn new(events: bool) -> WatchTable {
        WatchTable {
            widths: Vec::new(),
            age: None,
            last: HashMap::new(),
            events,
        }
    }

    /// The listed objects' table, remembering the row of each object.
    fn listed(&mut self, table: &Table, rows: Vec<((String, String), Vec<String>)>) -> String {
        let mut table = table.clone();
        self.age = table.header.iter().position(|h| h == "AGE");
        self.last = rows.into_iter().collect();
        if table.rows.is_empty() {
            // Nothing yet: the header comes with the first row.
            return String::new();
        }
        if self.events {
            table.header.insert(0, "EVENT".into());
            for r in &mut table.rows {
                r.insert(0, "ADDED".into());
            }
        }
        self.widths = table.widths();
        reserve_status(&mut self.widths, &table.header);
        let rows: Vec<String> = std::iter::once(&table.header)
            .chain(&table.rows)
            .map(|r| output::table_line(r, &self.widths) + "\n")
            .collect();
        rows.concat()
    }

    /// The line for an event, if it shows a change.
    fn event(&mut self, event: EventType, obj: &Object, table: &Table) -> Option<String> {
        let mut row = table.rows.first()?.clone();
        let key = key_of(obj);
        let mark = match event {
            EventType::Deleted => {
                self.last.remove(&key);
                "DELETED"
            }
            EventType::Added | EventType::Modified => {
                let unchanged = self.last.get(&key).is_some_and(|before| {
                    let differs =
                        |(i, (a, b)): (usize, (&String, &String))| Some(i) != self.age && a != b;
                    before.len() == row.len() && !before.iter().zip(&row).enumerate().any(differs)
                });
                self.last.insert(key, row.clone());
                if unchanged {
                    return None;
                }
                if event == EventType::Added {
                    "ADDED"
                } else {
                    "MODIFIED"
                }
            }
            EventType::Bookmark => return None,
        };
        let mut out = String::new();
        if self.widths.is_empty() {
            // The first row: the header comes with it, both to their widths.
            let mut header = table.header.clone();
            let mut first = row.clone();
            if self.events {
                header.insert(0, "EVENT".into());
                first.insert(0, mark.into());
            }
            self.age = table.header.iter().position(|h| h == "AGE");
            self.widths = header.iter().map(|h| h.chars().count()).collect();
            output::widen(&mut self.widths, &first);
            reserve_status(&mut self.widths, &header);
            out = output::table_line(&header, &self.widths) + "\n";
        }
        if self.events {
            row.insert(0, mark.into());
        } else if event == EventType::Deleted {
            row.push("(deleted)".into());
        }
        // A cell wider than its column: the columns widen, and the header
        // is printed again above the row, so every row lines up with the
        // header above it.
        let before = self.widths.clone();
        output::widen(&mut self.widths, &row);
        if out.is_empty() && self.widths != before {
            let mut header = table.header.clone();
            if self.events {
                header.insert(0, "EVENT".into());
            }
            out = output::table_line(&header, &self.widths) + "\n";
        }
        out.push_str(&output::table_line(&row, &self.widths));
        out.push('\n');
        Some(out)
    }
}

/// A STATUS column as wide as `CrashLoopBackOff` from the start: the
/// statuses a watched object goes through (`Pending`, `Preparing`,
/// `Succeeded`…) then line up without widening the table.
fn reserve_status(widths: &mut [usize], header: &[String]) {
    if let Some(i) = header.iter().position(|h| h == "STATUS") {
        widths[i] = widths[i].max("CrashLoopBackOff".len());
    }
}

fn key_of(o: &Object) -> (String, String) {
    (o.meta().namespace.clone(), o.meta().name.clone())
}

/// The pods of every namespace by the digest of their module, as
/// `namespace/name`. Pods of any phase count: the master keeps a module as
/// long as a pod names it.
async fn module_users(client: &Client, stale: bool) -> anyhow::Result<output::ModuleUsers> {
    let mut users = output::ModuleUsers::new();
    // Pod templates keep their modules too (the master does not remove them).
    for kind in flotilla_api::objects::MODULE_USERS {
        let (_, objs) = list_all(
            client,
            ListOptions {
                kind: Some(kind),
                namespace: None,
                label_selector: String::new(),
                node_name: None,
                stale,
            },
        )
        .await?;
        for o in &objs {
            let Some(module) = o.module() else { continue };
            let m = o.meta();
            let name = if kind == Kind::Pod {
                format!("{}/{}", m.namespace, m.name)
            } else {
                format!(
                    "{}/{}/{}",
                    kind.as_str().to_lowercase(),
                    m.namespace,
                    m.name
                )
            };
            users.entry(module.to_string()).or_default().push(name);
        }
    }
    Ok(users)
}

/// Lists in as many frames as it takes (`ListStream`): a list of any
/// number of objects, each up to the 1.5 MiB object limit, never needs one
/// answer larger than a frame.
pub(crate) async fn list_all(
    client: &Client,
    list: ListOptions,
) -> anyhow::Result<(u64, Vec<Object>)> {
    let (_send, mut recv) = client
        .open(&Request::ListStream(list))
        .await
        .map_err(explain)?;
    let mut collector = ListCollector::default();
    loop {
        let Some(frame) = read_frame::<Response>(&mut recv).await.map_err(explain)? else {
            bail!("the master ended the list before its end; try again");
        };
        match collector.take(frame) {
            Ok(Some(list)) => return Ok(list),
            Ok(None) => {}
            Err(ListStreamError::Api(e)) => return Err(explain(NetError::Api(e))),
            Err(e) => bail!("{e}"),
        }
    }
}

/// What `get all` lists, as kubectl's `get all` does for its kinds.
const ALL: [Kind; 6] = [
    Kind::Pod,
    Kind::Deployment,
    Kind::DaemonSet,
    Kind::ReplicaSet,
    Kind::Job,
    Kind::CronJob,
];

/// `get all`: a table per kind that has objects, each name prefixed with
/// its kind (`deployment/web`).
async fn get_all(config: &Path, a: &GetArgs) -> anyhow::Result<ExitCode> {
    if a.targets.len() > 1 || a.watch {
        bail!("`get all` lists; name a kind to get one object or to watch");
    }
    flotilla_api::selector::Selector::parse(&a.selector)?;
    let fields = FieldSelector::parse(&a.field_selector)?;
    let client = connect(config).await?;
    let mut groups = Vec::new();
    for kind in ALL {
        let (_, objs) = list_all(
            &client,
            ListOptions {
                kind: Some(kind),
                namespace: (!a.all_namespaces).then(|| a.namespace.clone()),
                label_selector: a.selector.clone(),
                node_name: None,
                stale: a.stale,
            },
        )
        .await?;
        let objs = select(objs, &fields, a.sort_by.as_deref())?;
        if !objs.is_empty() {
            groups.push((kind, objs));
        }
    }
    if groups.is_empty() {
        eprintln!("No resources found in {} namespace.", a.namespace);
        return Ok(ExitCode::SUCCESS);
    }
    // As kubectl: every section's names as KIND/NAME.
    let prefix = true;
    print!(
        "{}",
        print_groups(&groups, a, false, prefix, &output::ModuleUsers::new())?
    );
    Ok(ExitCode::SUCCESS)
}

/// The objects `fields` selects, sorted by `sort_by` if given.
fn select(
    objs: Vec<Object>,
    fields: &FieldSelector,
    sort_by: Option<&str>,
) -> anyhow::Result<Vec<Object>> {
    let mut objs: Vec<Object> = if fields.is_empty() {
        objs
    } else {
        objs.into_iter()
            .filter(|o| fields.matches(&listing::manifest(o)))
            .collect()
    };
    if let Some(by) = sort_by {
        let t = crate::jsonpath::Template::parse(by).map_err(|e| anyhow!("--sort-by: {e}"))?;
        listing::sort_by(&mut objs, &t);
    }
    Ok(objs)
}

/// How `get` shapes tables beyond each kind's columns.
fn shape_of(a: &GetArgs, prefix: Option<Kind>) -> Shape {
    Shape {
        namespace: a.all_namespaces,
        show_labels: a.show_labels,
        label_columns: a.label_columns.clone(),
        kind_prefix: prefix,
    }
}

/// The table of `objs` of `kind`, a row per object in their order, shaped
/// as the arguments ask.
fn shaped_table(
    kind: Kind,
    objs: &[Object],
    a: &GetArgs,
    prefix: Option<Kind>,
    users: &output::ModuleUsers,
) -> Table {
    let wide = a.output == Output::Wide;
    let header = render_table(kind, &[], wide, users).header;
    let rows = objs
        .iter()
        .map(|o| {
            render_table(kind, std::slice::from_ref(o), wide, users)
                .rows
                .into_iter()
                .next()
                .unwrap_or_default()
        })
        .collect();
    listing::shape(&header, rows, objs, &shape_of(a, prefix))
}

/// What `get` prints for groups of objects by kind, in the format asked.
fn print_groups(
    groups: &[(Kind, Vec<Object>)],
    a: &GetArgs,
    single: bool,
    prefix: bool,
    users: &output::ModuleUsers,
) -> anyhow::Result<String> {
    // The objects of every group in one list, for the formats that print
    // them together (tables print a group at a time, without a copy).
    let all = || -> Vec<Object> { groups.iter().flat_map(|(_, o)| o.iter().cloned()).collect() };
    let table_text = |t: &Table| {
        if a.no_headers {
            listing::without_header(t)
        } else {
            t.to_string()
        }
    };
    Ok(match &a.output {
        Output::Json | Output::Yaml => {
            let format = a.output.structured().unwrap_or(Format::Yaml);
            output::structured(&all(), format, single)?
        }
        Output::Name => groups
            .iter()
            .flat_map(|(_, objs)| objs.iter().map(|o| listing::name_of(o) + "\n"))
            .collect(),
        Output::JsonPath(t) => t.render(&listing::jsonpath_input(&all(), single)),
        Output::CustomColumns(cols) => table_text(&listing::custom_table(cols, &all())),
        Output::Table | Output::Wide => groups
            .iter()
            .filter(|(_, objs)| !objs.is_empty())
            .map(|(kind, objs)| {
                table_text(&shaped_table(
                    *kind,
                    objs,
                    a,
                    prefix.then_some(*kind),
                    users,
                ))
            })
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

pub async fn get(config: &Path, a: GetArgs) -> anyhow::Result<ExitCode> {
    if a.targets.first().map(String::as_str) == Some("all") {
        return get_all(config, &a).await;
    }
    let groups = listing::targets(&a.targets)?;
    flotilla_api::selector::Selector::parse(&a.selector)?;
    let fields = FieldSelector::parse(&a.field_selector)?;
    if let Some(by) = &a.sort_by {
        crate::jsonpath::Template::parse(by).map_err(|e| anyhow!("--sort-by: {e}"))?;
    }
    let watched = match groups.as_slice() {
        [(kind, names)] if names.len() <= 1 => Some((*kind, names.first().cloned())),
        _ if a.watch => {
            bail!("-w watches one kind (and at most one name): run one `get -w` per kind")
        }
        _ => None,
    };
    let client = connect(config).await?;
    let mut fetched: Vec<(Kind, Vec<Object>)> = Vec::new();
    let mut missing = Vec::new();
    let mut revision = 0;
    for (kind, names) in &groups {
        let kind = *kind;
        let namespace = if kind.namespaced() {
            a.namespace.clone()
        } else {
            String::new()
        };
        let objs = if names.is_empty() {
            let ns = (kind.namespaced() && !a.all_namespaces).then(|| namespace.clone());
            let (rev, objs) = list_all(
                &client,
                ListOptions {
                    kind: Some(kind),
                    namespace: ns,
                    label_selector: a.selector.clone(),
                    node_name: None,
                    stale: a.stale,
                },
            )
            .await?;
            revision = rev;
            objs
        } else {
            let mut objs = Vec::new();
            for name in names {
                let got = call(
                    &client,
                    &Request::Get {
                        kind,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        stale: a.stale,
                    },
                )
                .await;
                match got {
                    Ok(Response::Object(o)) => objs.push(o),
                    Ok(other) => bail!("unexpected answer {other:?}"),
                    // One missing name of several: the others still print.
                    Err(e) if names.len() > 1 || groups.len() > 1 => missing.push(e),
                    Err(e) => return Err(e),
                }
            }
            objs
        };
        let objs = select(objs, &fields, a.sort_by.as_deref())?;
        let objs = if a.show_secrets && kind == Kind::Secret {
            reveal_secrets(&client, objs, a.stale).await?
        } else {
            objs
        };
        fetched.push((kind, objs));
    }
    let single = groups.len() == 1 && groups[0].1.len() == 1;
    let empty = fetched.iter().all(|(_, o)| o.is_empty());
    if empty && !a.watch && missing.is_empty() {
        match fetched.as_slice() {
            [(kind, _)] => eprintln!("No {} found.", kind.plural()),
            _ => eprintln!("No resources found."),
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Which pods use each module (the IN-USE column): what module
    // collection goes by, so people see what will be removed.
    let users = if fetched.iter().any(|(k, _)| *k == Kind::Module) && a.output.tabular() {
        module_users(&client, a.stale).await?
    } else {
        output::ModuleUsers::new()
    };
    let Some((kind, name)) = watched.filter(|_| a.watch) else {
        print!(
            "{}",
            print_groups(&fetched, &a, single, groups.len() > 1, &users)?
        );
        for e in &missing {
            eprintln!("error: {e}");
        }
        return Ok(if missing.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    };
    let objs = fetched.pop().map(|(_, o)| o).unwrap_or_default();
    let mut watch_table = WatchTable::new(a.output_watch_events);
    let one = |o: &Object| shaped_table(kind, std::slice::from_ref(o), &a, None, &users);
    if a.output.tabular() {
        let rows = objs
            .iter()
            .filter_map(|o| Some((key_of(o), one(o).rows.into_iter().next()?)))
            .collect();
        let listed = shaped_table(kind, &objs, &a, None, &users);
        print!("{}", watch_table.listed(&listed, rows));
    } else {
        print!(
            "{}",
            print_groups(&[(kind, objs.clone())], &a, name.is_some(), false, &users)?
        );
    }
    let revision = if revision == 0 {
        objs.first().map(|o| o.meta().resource_version).unwrap_or(0)
    } else {
        revision
    };
    let ns = (kind.namespaced() && !a.all_namespaces).then(|| a.namespace.clone());
    let list = ListOptions {
        kind: Some(kind),
        namespace: ns,
        label_selector: a.selector.clone(),
        node_name: None,
        stale: a.stale,
    };
    let (_send, mut recv) = client
        .open(&Request::Watch(WatchOptions {
            list,
            from_revision: revision,
        }))
        .await
        .map_err(explain)?;
    loop {
        match read_frame::<Response>(&mut recv).await.map_err(explain)? {
            Some(Response::Event(ev)) => {
                if name.as_ref().is_some_and(|n| *n != ev.object.meta().name)
                    || ev.kind == EventType::Bookmark
                    || !(fields.is_empty() || fields.matches(&listing::manifest(&ev.object)))
                {
                    continue;
                }
                if a.output.tabular() {
                    if let Some(line) = watch_table.event(ev.kind, &ev.object, &one(&ev.object)) {
                        print!("{line}");
                    }
                } else {
                    let group = [(kind, vec![ev.object.clone()])];
                    let text = print_groups(&group, &a, true, false, &users)?;
                    // Custom columns: the header was printed with the list.
                    let text = match &a.output {
                        Output::CustomColumns(_) => text
                            .split_once('\n')
                            .map(|(_, r)| r.to_string())
                            .unwrap_or_default(),
                        _ => text,
                    };
                    print!("{text}");
                }
                let _ = std::io::stdout().flush();
            }
            Some(Response::Error(e)) => bail!("watch ended: {}", e.message),
            Some(_) => {}
            None => bail!("the master ended the watch"),
        }
    }
}

pub async fn describe(
    config: &Path,
    kind: &str,
    name: &str,
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let kind = parse_kind(kind)?;
    let client = connect(config).await?;
    let ns = if kind.namespaced() {
        namespace.to_string()
    } else {
        String::new()
    };
    let obj = match call(
        &client,
        &Request::Get {
            kind,
            namespace: ns,
            name: name.to_string(),
            stale: false,
        },
    )
    .await?
    {
        Response::Object(o) => o,
        other => bail!("unexpected answer {other:?}"),
    };
    let now = Time::now();
    let mut text = match &obj {
        Object::Pod(p) => crate::describe::pod(p, now),
        Object::Node(n) => {
            let (_, pods) = list_all(
                &client,
                ListOptions {
                    kind: Some(Kind::Pod),
                    node_name: Some(n.metadata.name.clone()),
                    ..ListOptions::default()
                },
            )
            .await?;
            let pods: Vec<flotilla_api::Pod> =
                pods.iter().filter_map(|o| o.as_pod()).cloned().collect();
            crate::describe::node(n, &pods, now)
        }
        other => crate::describe::generic(other, now),
    };
    if let Object::Service(svc) = &obj {
        let endpoints = match call(
            &client,
            &Request::Get {
                kind: Kind::Endpoints,
                namespace: svc.metadata.namespace.clone(),
                name: svc.metadata.name.clone(),
                stale: false,
            },
        )
        .await
        {
            Ok(Response::Object(Object::Endpoints(e))) => Some(e),
            _ => None,
        };
        text.push_str(&output::describe_service_endpoints(endpoints.as_ref()));
    }
    if kind != Kind::Event {
        text.push('\n');
        text.push_str(&output::describe_events(
            &events_about(&client, &obj).await?,
            Time::now(),
        ));
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// The events about `obj` (by uid), from its namespace (`default` for
/// cluster-scoped objects, where their events are kept).
async fn events_about(
    client: &Client,
    obj: &Object,
) -> anyhow::Result<Vec<flotilla_api::objects::event::Event>> {
    let m = obj.meta();
    let ns = if m.namespace.is_empty() {
        flotilla_api::meta::DEFAULT_NAMESPACE.to_string()
    } else {
        m.namespace.clone()
    };
    let (_, items) = list_all(
        client,
        ListOptions {
            kind: Some(Kind::Event),
            namespace: Some(ns),
            label_selector: String::new(),
            node_name: None,
            stale: false,
        },
    )
    .await?;
    Ok(items
        .into_iter()
        .filter_map(|o| o.into_kind::<flotilla_api::objects::event::Event>())
        .filter(|e| {
            let about = &e.involved_object;
            about.uid == m.uid
                || (about.uid.is_empty()
                    && about.kind == obj.kind().as_str()
                    && about.name == m.name)
        })
        .collect())
}

/// Most pods `logs -l` reads at once.
const MAX_LOG_PODS: usize = 20;

/// Arguments of `logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// A pod, `pod/NAME`, or `deploy/NAME` / `rs/NAME` / `ds/NAME` /
    /// `job/NAME` (one of its pods).
    #[arg(add = clap_complete::engine::ArgValueCompleter::new(crate::complete::Objects))]
    pod: Option<String>,
    /// The logs of every pod these labels select (e.g. app=web), each
    /// line after its pod's name.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    #[arg(short, long, default_value_t = crate::default_namespace())]
    namespace: String,
    /// Keep streaming new output; a line marks where the program started again.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, allow_negative_numbers = true)]
    tail: Option<i64>,
    /// The output of the program's run before the current one (before its
    /// last restart).
    #[arg(short, long)]
    previous: bool,
    /// Each line after the time it was written (RFC 3339, UTC, nanoseconds).
    #[arg(long)]
    timestamps: bool,
    /// Only lines written in this last while, e.g. 30s, 10m, 2h (by the
    /// node's clock).
    #[arg(long, conflicts_with = "since_time")]
    since: Option<String>,
    /// Only lines written at or after this time, e.g. 2026-12-04T10:00:00Z.
    #[arg(long)]
    since_time: Option<String>,
    /// Each line after its pod, `[pod/NAME] ` (always so with -l).
    #[arg(long)]
    prefix: bool,
}

impl LogsArgs {
    /// The request options for `pod` (checked: durations and times parse).
    fn options(&self, pod: &str) -> anyhow::Result<LogOptions> {
        let since_seconds = match &self.since {
            Some(s) => Some(
                parse_duration(s)
                    .map_err(|e| anyhow!("--since: {e}"))?
                    .as_secs()
                    .max(1),
            ),
            None => None,
        };
        let since_time = match &self.since_time {
            Some(t) => Some(flotilla_api::time::Time::parse_rfc3339(t).ok_or_else(|| {
                anyhow!("--since-time {t:?} is not a time; write it as RFC 3339 in UTC, e.g. 2026-12-04T10:00:00Z")
            })?),
            None => None,
        };
        Ok(LogOptions {
            namespace: self.namespace.clone(),
            name: pod.to_string(),
            follow: self.follow,
            tail_lines: self
                .tail
                .filter(|n| *n >= 0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            previous: self.previous,
            timestamps: self.timestamps,
            since_seconds,
            since_time,
        })
    }
}

pub async fn logs(config: &Path, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let namespace = args.namespace.as_str();
    // Checked before connecting: a typo in a flag needs no cluster.
    args.options("")?;
    if args.previous && args.follow {
        bail!("--previous shows a run that has ended: leave out -f");
    }
    let client = connect(config).await?;
    let pods = match (args.pod.as_deref(), args.selector.as_deref()) {
        (Some(_), Some(_)) => bail!("name a pod (or deploy/NAME) or give -l SELECTOR, not both"),
        (None, None) => bail!("name a pod, e.g. `flotilla logs web`, `flotilla logs deploy/web`, or `flotilla logs -l app=web`"),
        (Some(t), None) => vec![log_target(&client, t, namespace).await?],
        (None, Some(sel)) => {
            flotilla_api::selector::Selector::parse(sel)?;
            let (_, items) = list_all(
                &client,
                ListOptions {
                    kind: Some(Kind::Pod),
                    namespace: Some(namespace.to_string()),
                    label_selector: sel.to_string(),
                    node_name: None,
                    stale: false,
                },
            )
            .await?;
            let names: Vec<String> = items
                .iter()
                .filter_map(|o| o.as_pod())
                .filter(|p| p.spec.node_name.is_some())
                .map(|p| p.metadata.name.clone())
                .collect();
            if names.is_empty() {
                bail!("no pod selected by {sel:?} in namespace {namespace} runs on a node");
            }
            if names.len() > MAX_LOG_PODS {
                bail!(
                    "{} pods selected by {sel:?}; at most {MAX_LOG_PODS} at once: narrow the selector",
                    names.len()
                );
            }
            names
        }
    };
    let prefixed = args.prefix || args.selector.is_some();
    if let [pod] = pods.as_slice() {
        if !prefixed {
            return stream_log(&client, &args.options(pod)?, None).await;
        }
    }
    // Several pods: each line after its pod, the pods read together.
    let mut streams = Vec::new();
    let client = &client;
    for p in &pods {
        let opts = args.options(p)?;
        streams.push(async move { stream_log(client, &opts, Some(p.as_str())).await });
    }
    let mut failed = false;
    for r in futures_util::future::join_all(streams).await {
        if let Err(e) = r {
            eprintln!("error: {e}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The pod `logs TARGET` reads: a pod's name (or `pod/NAME`), or for
/// `deploy/NAME` and `rs/NAME` one of their pods, as kubectl picks it (a
/// running one, the newest).
async fn log_target(client: &Client, target: &str, namespace: &str) -> anyhow::Result<String> {
    let Some((kind, name)) = target.split_once('/') else {
        return Ok(target.to_string());
    };
    let kind = parse_kind(kind)?;
    if kind == Kind::Pod {
        return Ok(name.to_string());
    }
    let get = Request::Get {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        stale: false,
    };
    let selector = match call(client, &get).await? {
        Response::Object(Object::Deployment(d)) => d.spec.selector,
        Response::Object(Object::ReplicaSet(rs)) => rs.spec.selector,
        Response::Object(Object::DaemonSet(ds)) => ds.spec.selector,
        Response::Object(Object::Job(j)) => flotilla_api::objects::LabelSelector {
            match_labels: [(
                flotilla_api::objects::job::JOB_NAME_LABEL.to_string(),
                j.metadata.name,
            )]
            .into(),
            ..Default::default()
        },
        Response::Object(_) => {
            bail!(
                "logs reads pods and the pods of deployments, replicasets, daemonsets and jobs; \
                 {target} is none of them"
            )
        }
        other => bail!("unexpected answer {other:?}"),
    };
    let (_, items) = list_all(
        client,
        ListOptions {
            kind: Some(Kind::Pod),
            namespace: Some(namespace.to_string()),
            label_selector: String::new(),
            node_name: None,
            stale: false,
        },
    )
    .await?;
    let mut pods: Vec<&flotilla_api::Pod> = items
        .iter()
        .filter_map(|o| o.as_pod())
        .filter(|p| p.spec.node_name.is_some() && selector.matches(&p.metadata.labels))
        .collect();
    pods.sort_by_key(|p| {
        (
            p.status.phase != flotilla_api::objects::PodPhase::Running,
            std::cmp::Reverse(p.metadata.creation_timestamp),
        )
    });
    let pod = pods
        .first()
        .ok_or_else(|| anyhow!("{target} has no pod on a node yet"))?;
    if pods.len() > 1 {
        eprintln!("Found {} pods, using pod/{}", pods.len(), pod.metadata.name);
    }
    Ok(pod.metadata.name.clone())
}

/// Streams one pod's log to stdout; with `prefix`, line by line, each
/// line led by `[pod/NAME] `.
async fn stream_log(
    client: &Client,
    opts: &LogOptions,
    prefix: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let pod = &opts.name;
    let req = opts.request();
    let (_send, mut recv) = client.open(&req).await.map_err(explain)?;
    let mut out = std::io::stdout();
    let mut partial: Vec<u8> = Vec::new();
    let mut write = |bytes: &[u8], out: &mut std::io::Stdout| -> std::io::Result<()> {
        let Some(prefix) = prefix else {
            out.write_all(bytes)?;
            return out.flush();
        };
        partial.extend_from_slice(bytes);
        let mut lock = out.lock();
        while let Some(at) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=at).collect();
            lock.write_all(format!("[pod/{prefix}] ").as_bytes())?;
            lock.write_all(&line)?;
        }
        lock.flush()
    };
    loop {
        match read_frame::<Response>(&mut recv).await.map_err(explain)? {
            Some(Response::Chunk(b)) => write(&b, &mut out)?,
            Some(Response::End) | None => break,
            // Worded as every command words an error from the master; with
            // several pods, after the pod it is about.
            Some(Response::Error(e)) => match prefix {
                Some(_) => bail!("pod/{pod}: {} ({:?})", e.message, e.code),
                None => bail!("{} ({:?})", e.message, e.code),
            },
            Some(_) => {}
        }
    }
    if let Some(p) = prefix {
        if !partial.is_empty() {
            println!("[pod/{p}] {}", String::from_utf8_lossy(&partial));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `delete` deletes.
pub struct DeleteTargets {
    /// `KIND NAME…`, `KIND/NAME…`, or a kind with `all` or `selector`.
    pub targets: Vec<String>,
    pub files: Vec<PathBuf>,
    pub namespace: String,
    /// Every object of the kind(s).
    pub all: bool,
    pub selector: Option<String>,
    /// With `all` or `selector`: in every namespace.
    pub all_namespaces: bool,
}

pub async fn delete(
    config: &Path,
    which: &DeleteTargets,
    cascade: Propagation,
    wait: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let mut targets: Vec<(Kind, String, String)> = Vec::new();
    if !which.files.is_empty() {
        for (_, _, o) in load_manifests(&which.files)?.0 {
            targets.push((o.kind(), o.meta().namespace.clone(), o.meta().name.clone()));
        }
    }
    let groups = if which.targets.is_empty() {
        Vec::new()
    } else {
        listing::targets(&which.targets)?
    };
    let by_query = which.all || which.selector.is_some();
    if let Some(sel) = &which.selector {
        flotilla_api::selector::Selector::parse(sel)?;
    }
    // (kind, selector) pairs to list before deleting what they find.
    let mut queries = Vec::new();
    for (kind, names) in &groups {
        let kind = *kind;
        match (names.is_empty(), by_query) {
            (true, false) => bail!(
                "name the {} to delete, e.g. `flotilla delete {} NAME`, or give --all or -l SELECTOR",
                kind.plural(),
                kind.as_str().to_lowercase()
            ),
            (false, true) => bail!("give names, or --all / -l, not both"),
            (true, true) => queries.push(kind),
            (false, false) => {
                let ns = if kind.namespaced() {
                    which.namespace.clone()
                } else {
                    String::new()
                };
                targets.extend(names.iter().map(|n| (kind, ns.clone(), n.clone())));
            }
        }
    }
    if by_query && groups.is_empty() {
        bail!("name the kind to delete with --all or -l, e.g. `flotilla delete pods --all`");
    }
    if targets.is_empty() && queries.is_empty() {
        bail!("nothing to delete: give a kind and names, or -f FILE");
    }
    let client = connect(config).await?;
    for kind in queries {
        let ns = (kind.namespaced() && !which.all_namespaces).then(|| which.namespace.clone());
        let (_, objs) = list_all(
            &client,
            ListOptions {
                kind: Some(kind),
                namespace: ns,
                label_selector: which.selector.clone().unwrap_or_default(),
                node_name: None,
                stale: false,
            },
        )
        .await?;
        if objs.is_empty() {
            eprintln!("No {} found.", kind.plural());
        }
        for o in objs {
            if kind == Kind::Namespace && o.meta().name == flotilla_api::meta::DEFAULT_NAMESPACE {
                // `delete ns --all` empties the others; the default one stays.
                continue;
            }
            targets.push((kind, o.meta().namespace.clone(), o.meta().name.clone()));
        }
    }
    let client = connect(config).await?;
    let mut failed = false;
    for (kind, namespace, name) in targets {
        let req = Request::DeleteWith {
            kind,
            namespace,
            name: name.clone(),
            resource_version: 0,
            propagation: cascade,
        };
        match client.call(&req).await {
            Ok(Response::Object(o)) if o.meta().is_deleting() => {
                println!("{} \"{name}\" deleted", kind.as_str().to_lowercase());
                if let Some(limit) = wait {
                    if let Err(e) = wait_gone(&client, &o, limit).await {
                        eprintln!("error: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(_) => println!("{} \"{name}\" deleted", kind.as_str().to_lowercase()),
            Err(e) => {
                eprintln!("error: {}", explain(e));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits until `o`, deleted but held by its finalizers, is gone.
async fn wait_gone(client: &Client, o: &Object, limit: Duration) -> anyhow::Result<()> {
    let m = o.meta();
    let get = Request::Get {
        kind: o.kind(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        stale: false,
    };
    let start = std::time::Instant::now();
    loop {
        let left = match client.call(&get).await {
            Ok(Response::Object(now)) if now.meta().uid == m.uid => now.meta().finalizers.clone(),
            Ok(_) => return Ok(()),
            Err(NetError::Api(ApiError {
                code: ErrorCode::NotFound,
                ..
            })) => return Ok(()),
            Err(e) => return Err(explain(e)),
        };
        if start.elapsed() >= limit {
            bail!(
                "{} is still being deleted after {}s: it waits for its finalizers {left:?} \
                 (see `flotilla get {} {} -o yaml`); pass --wait=false not to wait",
                o.describe(),
                limit.as_secs(),
                o.kind().plural(),
                m.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What a node token allows: how many joins, and which names.
#[derive(Debug, Default)]
pub struct TokenLimits {
    pub uses: Option<u32>,
    pub name_prefix: Option<String>,
}

pub async fn token_create(
    config: &Path,
    ttl: &str,
    description: &str,
    master: bool,
    node: Option<String>,
    limits: TokenLimits,
) -> anyhow::Result<ExitCode> {
    let ttl = parse_duration(ttl)?;
    if limits.uses == Some(0) {
        bail!("--uses 0 would join nothing; give 1 or more, or leave it out");
    }
    let client = connect(config).await?;
    let ttl_seconds = ttl.as_secs().max(1);
    let description = description.to_string();
    let req = match &node {
        Some(name) => Request::CreateNodeToken {
            ttl_seconds,
            description,
            node_name: name.clone(),
        },
        None if limits.uses.is_some() || limits.name_prefix.is_some() => {
            Request::CreateLimitedToken {
                ttl_seconds,
                description,
                name_prefix: limits.name_prefix.clone().unwrap_or_default(),
                max_uses: limits.uses,
            }
        }
        None => Request::CreateToken {
            ttl_seconds,
            description,
            master,
        },
    };
    match call(&client, &req).await? {
        Response::Token { token, expires } => {
            println!("{token}");
            if master {
                eprintln!("valid until {expires}; it hands out the cluster CA's key: keep it secret. Join a master with:\n  flotilla master --join {} --token {token} --advertise <HOST:PORT> --data-dir <DIR>", client.addr);
            } else {
                let name = match (&node, &limits.name_prefix) {
                    (Some(n), _) => n.clone(),
                    (None, Some(p)) => format!("{p}<NAME>"),
                    (None, None) => "<NAME>".into(),
                };
                let joins = match limits.uses {
                    Some(1) => " for one node".to_string(),
                    Some(n) => format!(" for {n} nodes"),
                    None => String::new(),
                };
                eprintln!("valid until {expires}{joins}; join a node with:\n  flotilla node --master {} --token {token} --name {name}", client.addr);
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

/// `flotilla token list`.
pub async fn token_list(config: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    let tokens = match call(&client, &Request::ListTokens).await? {
        Response::Tokens(t) => t,
        other => bail!("unexpected answer {other:?}"),
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&tokens)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&tokens)?),
        Format::Table | Format::Wide => {
            if tokens.is_empty() {
                eprintln!("No tokens found.");
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", output::tokens(&tokens, Time::now()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla token revoke ID` (or the whole token).
pub async fn token_revoke(config: &Path, id: &str) -> anyhow::Result<ExitCode> {
    // A whole token names its id in its third part.
    let id = flotilla_api::identity::JoinToken::parse(id)
        .map(|t| t.id)
        .unwrap_or_else(|_| id.to_string());
    let client = connect(config).await?;
    call(&client, &Request::RevokeToken { id: id.clone() }).await?;
    println!("token {id} revoked");
    Ok(ExitCode::SUCCESS)
}

/// `flotilla cluster status`: the masters, the leader, the term, the commit
/// index and each member's lag, as the leader sees them.
pub async fn cluster_status(config: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    let status = match call(&client, &Request::ClusterStatus).await? {
        Response::ClusterStatus(s) => s,
        other => bail!("unexpected answer {other:?}"),
    };
    let unreachable = unreachable_masters(config, &status, &client.addr).await;
    print!("{}", output::cluster_status(&status, &unreachable, format)?);
    if !unreachable.is_empty() {
        eprintln!(
            "masters {unreachable:?} did not answer from here within {PROBE_TIMEOUT:?}: down, or cut off from this machine"
        );
    }
    if matches!(format, Format::Table | Format::Wide) {
        // Masters older than certificate renewal do not answer this; the
        // status above stands without it.
        if let Ok(Response::Certificates(mut certs)) = client.call(&Request::Certificates).await {
            let cfg = read_config(config)?;
            if let Ok(v) = Validity::of_pem(&cfg.cert_pem) {
                let who = Identity::from_cert_der(
                    flotilla_api::tls::parse_certs(&cfg.cert_pem)?
                        .first()
                        .map(|c| c.as_ref())
                        .unwrap_or_default(),
                )
                .map(|i| i.to_string())
                .unwrap_or_else(|_| "unknown".into());
                certs.push(flotilla_api::protocol::CertificateStatus {
                    name: format!("this client ({who})"),
                    not_before: v.not_before,
                    not_after: v.not_after,
                });
            }
            println!();
            print!("{}", output::certificates(&certs, Time::now()));
        }
    }
    if status.leader.is_none() {
        eprintln!("no leader: a majority of masters is unreachable or an election is under way; writes wait until one is elected");
    } else if status.leader != Some(status.reported_by) {
        eprintln!(
            "the leader could not be reached; this is master {}'s own view (lags unknown)",
            status.reported_by
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `cluster status` waits for each master to answer a hello.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The members of `status` that do not answer a hello from here (all at
/// once, each within [`PROBE_TIMEOUT`]); the one that answered the status
/// counts as reachable.
async fn unreachable_masters(
    config: &Path,
    status: &flotilla_api::protocol::ClusterStatus,
    answered: &str,
) -> Vec<u64> {
    let Ok(cfg) = read_config(config) else {
        return Vec::new();
    };
    let Ok(tls) = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
    else {
        return Vec::new();
    };
    let mut probes = tokio::task::JoinSet::new();
    for m in status
        .members
        .iter()
        .filter(|m| m.addr != answered && m.node_id != status.reported_by)
    {
        let (tls, addr, id) = (tls.clone(), m.addr.clone(), m.node_id);
        probes.spawn(async move {
            let hello = Client::connect(std::slice::from_ref(&addr), tls, "flotilla-cli/probe");
            match tokio::time::timeout(PROBE_TIMEOUT, hello).await {
                Ok(Ok(c)) => {
                    c.conn.close(0u32.into(), b"probed");
                    None
                }
                _ => Some(id),
            }
        });
    }
    let mut down: Vec<u64> = probes.join_all().await.into_iter().flatten().collect();
    down.sort_unstable();
    down
}

/// `flotilla cluster remove ID`: takes a master out of the membership.
pub async fn cluster_remove(config: &Path, node_id: u64) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    match call(&client, &Request::RemoveMaster { node_id }).await? {
        Response::Ok => {
            println!("master {node_id} removed");
            eprintln!("stop its process and delete its data directory; to add it again, join it with a new `flotilla token create --master`");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

/// `flotilla cluster snapshot FILE`: the whole state, as of a linearizable
/// read, written to FILE atomically and readable only by its owner.
pub async fn cluster_snapshot(config: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    let (_send, mut recv) = client.open(&Request::Snapshot).await.map_err(explain)?;
    let mut bytes = Vec::new();
    loop {
        match read_frame::<Response>(&mut recv).await.map_err(explain)? {
            Some(Response::Chunk(c)) => bytes.extend_from_slice(&c),
            Some(Response::End) => break,
            Some(Response::Error(e)) => bail!("{} ({:?})", e.message, e.code),
            Some(other) => bail!("unexpected answer {other:?}"),
            None => bail!("the master ended the backup early; try again"),
        }
    }
    // Owner-only: the backup holds every pod's env values and the join tokens.
    flotilla_api::net::write_private_bytes(file, &bytes)
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!("saved {} bytes to {}", bytes.len(), file.display());
    eprintln!("it holds join token records and every object; restore with `flotilla master --restore {} --data-dir <NEW DIR>`", file.display());
    Ok(ExitCode::SUCCESS)
}

/// `flotilla config view`: what the client config holds, keys left out.
pub fn config_view(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = read_config(config)?;
    let now = Time::now();
    println!("config:   {}", config.display());
    println!("cluster:  {}", cfg.cluster);
    println!("masters:  {}", cfg.masters.join(", "));
    let der = flotilla_api::tls::parse_certs(&cfg.cert_pem)?;
    let Some(leaf) = der.first() else {
        println!("identity: none (no client certificate)");
        return Ok(ExitCode::SUCCESS);
    };
    let who = Identity::from_cert_der(leaf.as_ref())
        .map(|i| i.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    println!("identity: {who}");
    let v = Validity::of_pem(&cfg.cert_pem)?;
    println!("expires:  {} ({})", v.not_after, v.left(now));
    if v.expired(now) {
        eprintln!("the certificate has expired; get a new config from an admin");
    } else if v.expires_soon(now) {
        eprintln!("the certificate expires soon; run `flotilla config renew`");
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla config renew`: a new key and certificate for the same identity,
/// signed by the master while the current certificate is still valid.
pub async fn config_renew(config: &Path) -> anyhow::Result<ExitCode> {
    let before = read_config(config)?.cert_pem;
    // Connecting renews a certificate that is due already (and says so
    // on stderr); otherwise it is renewed here.
    let client = connect(config).await?;
    let now = read_config(config)?.cert_pem;
    let (identity, v) = if now != before {
        let der = flotilla_api::tls::parse_certs(&now)?;
        let first = der.first().ok_or_else(|| anyhow!("no certificate"))?;
        (
            Identity::from_cert_der(first.as_ref())?,
            Validity::of_pem(&now)?,
        )
    } else {
        renew_config(config, &client).await?
    };
    println!(
        "renewed the certificate of {identity} in {}: valid until {} ({})",
        config.display(),
        v.not_after,
        v.left(Time::now())
    );
    Ok(ExitCode::SUCCESS)
}

/// Replaces the certificate of the config at `config` with a new one (and
/// a new key) that the master signs for the same identity; gives the
/// identity and the new certificate's validity.
async fn renew_config(config: &Path, client: &Client) -> anyhow::Result<(Identity, Validity)> {
    let cfg = read_config(config)?;
    let der = flotilla_api::tls::parse_certs(&cfg.cert_pem)?;
    let identity = der
        .first()
        .map(|c| Identity::from_cert_der(c.as_ref()))
        .transpose()?
        .ok_or_else(|| anyhow!("{} holds no client certificate to renew", config.display()))?;
    let (csr_pem, key_pem) = flotilla_api::identity::new_csr(&identity)?;
    let (cert_pem, ca_pem) = match call(client, &Request::RenewCertificate { csr_pem }).await? {
        Response::Renewed { cert_pem, ca_pem } => (cert_pem, ca_pem),
        other => bail!("unexpected answer {other:?}"),
    };
    let renewed = ClientConfigFile {
        cert_pem,
        key_pem,
        ca_pem,
        ..cfg
    };
    flotilla_api::net::write_private_file(config, &renewed.render())
        .with_context(|| format!("cannot write {}", config.display()))?;
    Ok((identity, Validity::of_pem(&renewed.cert_pem)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: flotilla_api::objects::PodPhase) -> Object {
        let mut p = flotilla_api::Pod::default();
        p.metadata.namespace = "default".into();
        p.metadata.name = name.into();
        // Ten days and a minute: the same AGE however long the test takes.
        p.metadata.creation_timestamp = Some(Time(Time::now().millis() - 864_060_000));
        p.status.phase = phase;
        Object::Pod(p)
    }

    fn row(o: &Object) -> Vec<String> {
        render_table(
            Kind::Pod,
            std::slice::from_ref(o),
            false,
            &Default::default(),
        )
        .rows
        .remove(0)
    }

    #[test]
    fn a_watch_prints_aligned_rows_only_for_changes_and_marks_deletions() {
        use flotilla_api::objects::PodPhase::{Pending, Running};
        let a = pod("a", Pending);
        let listed = [a.clone()];
        let mut w = WatchTable::new(false);
        let table = render_table(Kind::Pod, &listed, false, &Default::default());
        let out = w.listed(&table, vec![(key_of(&a), row(&a))]);
        assert_eq!(
            out,
            "NAMESPACE   NAME   READY   STATUS             RESTARTS   AGE\ndefault     a      0/1     Pending            0          10d\n"
        );
        let one = |o: &Object| {
            render_table(
                Kind::Pod,
                std::slice::from_ref(o),
                false,
                &Default::default(),
            )
        };
        // The same row again (a write that shows nothing new): no line.
        assert_eq!(w.event(EventType::Modified, &a, &one(&a)), None);
        // A change: a line under the header's columns.
        let running = pod("a", Running);
        assert_eq!(
            w.event(EventType::Modified, &running, &one(&running))
                .as_deref(),
            Some("default     a      0/1     Running            0          10d\n")
        );
        // A wider cell widens its column from then on, under a header
        // printed again at the new widths.
        let long = pod("a-much-longer-name", Pending);
        assert_eq!(
            w.event(EventType::Added, &long, &one(&long)).as_deref(),
            Some("NAMESPACE   NAME                 READY   STATUS             RESTARTS   AGE\ndefault     a-much-longer-name   0/1     Pending            0          10d\n")
        );
        // A deletion is marked, even with the row as it was.
        assert_eq!(
            w.event(EventType::Deleted, &running, &one(&running))
                .as_deref(),
            Some(
                "default     a                    0/1     Running            0          10d   (deleted)\n"
            )
        );
        assert_eq!(w.event(EventType::Bookmark, &a, &one(&a)), None);
    }

    #[test]
    fn a_watch_of_nothing_prints_the_header_with_the_first_row_and_events_first_if_asked() {
        use flotilla_api::objects::PodPhase::Pending;
        let mut w = WatchTable::new(true);
        let empty = render_table(Kind::Pod, &[], false, &Default::default());
        assert_eq!(w.listed(&empty, Vec::new()), "");
        let a = pod("a", Pending);
        let one = render_table(
            Kind::Pod,
            std::slice::from_ref(&a),
            false,
            &Default::default(),
        );
        assert_eq!(
            w.event(EventType::Added, &a, &one).as_deref(),
            Some("EVENT   NAMESPACE   NAME   READY   STATUS             RESTARTS   AGE\nADDED   default     a      0/1     Pending            0          10d\n")
        );
        assert_eq!(
            w.event(EventType::Deleted, &a, &one).as_deref(),
            Some("EVENT     NAMESPACE   NAME   READY   STATUS             RESTARTS   AGE\nDELETED   default     a      0/1     Pending            0          10d\n")
        );
    }

    #[test]
    fn the_master_that_answered_comes_first_and_learned_ones_last() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let known = v(&["a:1", "b:1"]);
        assert_eq!(masters_after(&known, "a:1", &v(&["a:1", "b:1"])), None);
        assert_eq!(
            masters_after(&known, "b:1", &v(&["a:1", "b:1"])),
            Some(v(&["b:1", "a:1"]))
        );
        assert_eq!(
            masters_after(&known, "a:1", &v(&["c:1", "a:1"])),
            Some(v(&["a:1", "b:1", "c:1"]))
        );
    }
}
