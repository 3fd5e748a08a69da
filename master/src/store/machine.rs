//! The state machine: applies one [`Command`] to the tables inside one redb
//! write transaction. Deterministic: the result depends only on the command
//! and the tables (no clock, no randomness), so every replica that applies
//! the same commands in the same order holds the same state.

use super::command::{Command, Outcome, STORED_CHUNK};
use super::error::{db, StoreError};
use super::rules;
use super::tables::{
    chunk_key, chunk_range, counters, decode_counter, decode_value, encode_counter, encode_value,
    history_key, parse_chunk_key, seal, unseal, COUNTERS, HISTORY, MODULE_CHUNKS, OBJECTS, TOKENS,
};
use flotilla_api::meta::{FOREGROUND_DELETION, NAMESPACE_FINALIZER};
use flotilla_api::objects::{key_prefix, module_name, object_key, Kind, Object};
use flotilla_api::protocol::{EventType, Propagation, WatchEvent};
use redb::{ReadableTable, Table, WriteTransaction};
use sha2::{Digest, Sha256};

/// The tables of one write transaction, and the revision counter as it moves.
pub(crate) struct Machine<'t> {
    objects: Table<'t, &'static [u8], &'static [u8]>,
    counters: Table<'t, &'static [u8], &'static [u8]>,
    history: Table<'t, u64, &'static [u8]>,
    chunks: Table<'t, &'static [u8], &'static [u8]>,
    tokens: Table<'t, &'static [u8], &'static [u8]>,
    revision: u64,
    events: Vec<WatchEvent>,
    changed: bool,
}

impl<'t> Machine<'t> {
    /// Opens (creating if needed) every table in `txn`.
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Machine<'t>, StoreError> {
        let counters = txn
            .open_table(COUNTERS)
            .map_err(db("opening the counters table"))?;
        let revision = read_counter(&counters, counters::REVISION)?;
        Ok(Machine {
            objects: txn
                .open_table(OBJECTS)
                .map_err(db("opening the objects table"))?,
            history: txn
                .open_table(HISTORY)
                .map_err(db("opening the history table"))?,
            chunks: txn
                .open_table(MODULE_CHUNKS)
                .map_err(db("opening the module_chunks table"))?,
            tokens: txn
                .open_table(TOKENS)
                .map_err(db("opening the tokens table"))?,
            counters,
            revision,
            events: Vec::new(),
            changed: false,
        })
    }

    /// Counts a join with a counting token (see [`Command::UseToken`]).
    fn use_token(&mut self, id: &str) -> Result<Outcome, StoreError> {
        let key = id.as_bytes();
        let stored = self
            .tokens
            .get(key)
            .map_err(db("reading a token"))?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| StoreError::not_found(format!("token {id}")))?;
        let mut record: super::TokenRecord = decode_value("tokens", key, &stored)?;
        let super::TokenUsage::NodeCounted { max_uses, uses, .. } = &mut record.usage else {
            return Ok(Outcome::Done);
        };
        if let Some(max) = max_uses.filter(|max| *uses >= *max) {
            return Err(StoreError::invalid(format!(
                "token {id} has had all the joins it allows ({max})"
            )));
        }
        *uses = uses.saturating_add(1);
        self.put_token(&record)
    }

    /// Stores (or replaces) a token record.
    fn put_token(&mut self, record: &super::TokenRecord) -> Result<Outcome, StoreError> {
        if record.id.is_empty() {
            return Err(StoreError::invalid("a token needs an id"));
        }
        let key = record.id.as_bytes();
        let value = encode_value("tokens", key, "a token", record)?;
        self.tokens
            .insert(key, value.as_slice())
            .map_err(db("writing a token"))?;
        self.changed = true;
        Ok(Outcome::Done)
    }

    /// Applies one command, then [`finish`](Machine::finish) must run before commit.
    pub(crate) fn apply(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        match cmd {
            Command::Create { object } => self.create(object),
            Command::Update {
                object,
                expected_rv,
                status_only,
            } => self.update(object, expected_rv, status_only),
            Command::Delete {
                kind,
                namespace,
                name,
                expected_rv,
            } => self.delete(kind, &namespace, &name, expected_rv),
            Command::PutModule { module, bytes } => self.put_module(module, &bytes),
            Command::LegacyPutModule { module, bytes } => self.put_module(module.into(), &bytes),
            Command::PutModuleChunk {
                digest,
                offset,
                bytes,
            } => self.put_chunk(&digest, offset, &bytes),
            Command::CommitModule { module } => self.commit_module(module),
            Command::LegacyCommitModule { module } => self.commit_module(module.into()),
            Command::Bind {
                namespace,
                name,
                uid,
                node,
                at,
            } => self.bind(&namespace, &name, &uid, &node, at),
            Command::DeleteOrphaning {
                kind,
                namespace,
                name,
                expected_rv,
            } => self.delete_orphaning(kind, &namespace, &name, expected_rv),
            Command::DeleteAt {
                kind,
                namespace,
                name,
                expected_rv,
                propagation,
                at,
            } => self.delete_at(kind, &namespace, &name, expected_rv, propagation, at),
            Command::DiscardUpload { digest } => {
                // Once committed, the staged chunks are the module's bytes.
                if !self.is_stored(&digest)? {
                    self.drop_chunks(&digest)?;
                }
                Ok(Outcome::Done)
            }
            // The hash is the raft state machine's business; the state stays.
            Command::CheckState => Ok(Outcome::Done),
            Command::Batch(_) => Err(StoreError::invalid(
                "a batch of commands is applied from the raft log, one command at a time",
            )),
            Command::PutToken { record } => self.put_token(&record),
            Command::UseToken { id } => self.use_token(&id),
            Command::DeleteToken { id } => {
                if self
                    .tokens
                    .remove(id.as_bytes())
                    .map_err(db("removing a token"))?
                    .is_none()
                {
                    return Err(StoreError::not_found(format!("token {id}")));
                }
                self.changed = true;
                Ok(Outcome::Done)
            }
        }
    }

    fn create(&mut self, object: Object) -> Result<Outcome, StoreError> {
        rules::check_create(&object)?;
        let key = object.key();
        if self.get_object(&key)?.is_some() {
            return Err(StoreError::already_exists(rules::describe(&object)));
        }
        let revision = self.next_revision();
        let object = rules::stamp_create(object, revision);
        self.put_object(&key, &object)?;
        self.record(EventType::Added, object.clone())?;
        Ok(Outcome::Object(object))
    }

    fn update(
        &mut self,
        object: Object,
        expected_rv: Option<u64>,
        status_only: bool,
    ) -> Result<Outcome, StoreError> {
        let key = object.key();
        let Some(stored) = self.get_object(&key)? else {
            return Err(StoreError::not_found(rules::describe(&object)));
        };
        rules::check_cas(
            &rules::describe(&stored),
            expected_rv,
            stored.meta().resource_version,
        )?;
        let mut merged = rules::merge_update(&stored, object, status_only)?;
        if merged == stored {
            // Nothing to write: no revision, no event (as Kubernetes does), so
            // controllers that write the same status again do not wake watchers.
            return Ok(Outcome::Object(stored));
        }
        merged.meta_mut().resource_version = self.next_revision();
        if merged.meta().is_deleting() && merged.meta().finalizers.is_empty() {
            // The last finalizer of a deleted object is gone: so is it.
            self.objects
                .remove(key.as_bytes())
                .map_err(db("removing an object"))?;
            self.record(EventType::Deleted, merged.clone())?;
            return Ok(Outcome::Deleted(merged));
        }
        self.put_object(&key, &merged)?;
        self.record(EventType::Modified, merged.clone())?;
        Ok(Outcome::Object(merged))
    }

    fn delete_at(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        expected_rv: Option<u64>,
        propagation: Propagation,
        at: flotilla_api::time::Time,
    ) -> Result<Outcome, StoreError> {
        let key = object_key(kind, namespace, name);
        let display = rules::display_key(kind, namespace, name);
        let Some(mut stored) = self.get_object(&key)? else {
            return Err(StoreError::not_found(display));
        };
        rules::check_cas(&display, expected_rv, stored.meta().resource_version)?;
        let mut finalizers = stored.meta().finalizers.clone();
        let mut add = |f: &str| {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(f.to_string());
            }
        };
        if propagation == Propagation::Foreground {
            add(FOREGROUND_DELETION);
        }
        if kind == Kind::Namespace {
            add(NAMESPACE_FINALIZER);
        }
        let unchanged = stored.meta().is_deleting() && stored.meta().finalizers == finalizers;
        let out = if finalizers.is_empty() {
            self.delete(kind, namespace, name, expected_rv)?
        } else if unchanged {
            Outcome::Object(stored)
        } else {
            let m = stored.meta_mut();
            m.deletion_timestamp = m.deletion_timestamp.or(Some(at));
            m.finalizers = finalizers;
            m.resource_version = self.next_revision();
            self.put_object(&key, &stored)?;
            self.record(EventType::Modified, stored.clone())?;
            Outcome::Object(stored)
        };
        if propagation == Propagation::Orphan {
            let (Outcome::Deleted(owner) | Outcome::Object(owner)) = &out else {
                return Ok(out);
            };
            let uid = owner.meta().uid.clone();
            self.orphan_dependents(namespace, &uid)?;
        }
        Ok(out)
    }

    fn bind(
        &mut self,
        namespace: &str,
        name: &str,
        uid: &str,
        node: &str,
        at: flotilla_api::time::Time,
    ) -> Result<Outcome, StoreError> {
        let key = object_key(Kind::Pod, namespace, name);
        let display = rules::display_key(Kind::Pod, namespace, name);
        let Some(Object::Pod(mut pod)) = self.get_object(&key)? else {
            return Err(StoreError::not_found(display));
        };
        if pod.metadata.uid != uid {
            return Err(StoreError::not_found(format!(
                "{display} with uid {uid} (it was replaced)"
            )));
        }
        match pod.spec.node_name.as_deref() {
            Some(bound) if bound == node => return Ok(Outcome::Object(Object::Pod(pod))),
            Some(bound) => {
                return Err(StoreError::invalid(format!(
                    "{display} is bound to {bound} already"
                )))
            }
            None => {}
        }
        pod.spec.node_name = Some(node.to_string());
        rules::mark_scheduled(&mut pod.status, node, at);
        let mut object = Object::Pod(pod);
        object.meta_mut().resource_version = self.next_revision();
        self.put_object(&key, &object)?;
        self.record(EventType::Modified, object.clone())?;
        Ok(Outcome::Object(object))
    }

    fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        expected_rv: Option<u64>,
    ) -> Result<Outcome, StoreError> {
        let key = object_key(kind, namespace, name);
        let display = rules::display_key(kind, namespace, name);
        let Some(mut stored) = self.get_object(&key)? else {
            return Err(StoreError::not_found(display));
        };
        rules::check_cas(&display, expected_rv, stored.meta().resource_version)?;
        if let Object::Module(m) = &stored {
            // Checked here, in log order, so that no pod created before the
            // delete is left without its module, however the delete was decided.
            let users = self.pods_using(&m.spec.digest)?;
            if let Some(first) = users.first() {
                return Err(StoreError::invalid(format!(
                    "{display} is used by {} pod(s) or pod template(s), first {first}: delete them first \
                     (a module no pod uses is removed on its own after --module-grace)",
                    users.len()
                )));
            }
            self.drop_chunks(&m.spec.digest)?;
        }
        stored.meta_mut().resource_version = self.next_revision();
        self.objects
            .remove(key.as_bytes())
            .map_err(db("removing an object"))?;
        self.record(EventType::Deleted, stored.clone())?;
        Ok(Outcome::Deleted(stored))
    }

    fn delete_orphaning(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        expected_rv: Option<u64>,
    ) -> Result<Outcome, StoreError> {
        let out = self.delete(kind, namespace, name, expected_rv)?;
        let Outcome::Deleted(owner) = &out else {
            return Ok(out);
        };
        let uid = owner.meta().uid.clone();
        self.orphan_dependents(namespace, &uid)?;
        Ok(out)
    }

    /// Removes the references to the owner `uid` from the objects of
    /// `namespace` that name it.
    fn orphan_dependents(&mut self, namespace: &str, uid: &str) -> Result<(), StoreError> {
        if namespace.is_empty() || uid.is_empty() {
            return Ok(());
        }
        for dependent_kind in Kind::ALL.iter().filter(|k| k.namespaced()) {
            let prefix = key_prefix(*dependent_kind, Some(namespace));
            let mut owned = Vec::new();
            for entry in self
                .objects
                .range(prefix.as_bytes()..)
                .map_err(db("listing dependents"))?
            {
                let (k, v) = entry.map_err(db("listing dependents"))?;
                if !k.value().starts_with(prefix.as_bytes()) {
                    break;
                }
                let o: Object = decode_value("objects", k.value(), v.value())?;
                if o.meta().owner_references.iter().any(|r| r.uid == uid) {
                    owned.push(o);
                }
            }
            for mut o in owned {
                o.meta_mut().owner_references.retain(|r| r.uid != uid);
                o.meta_mut().resource_version = self.next_revision();
                self.put_object(&o.key(), &o)?;
                self.record(EventType::Modified, o)?;
            }
        }
        Ok(())
    }

    fn put_module(
        &mut self,
        module: flotilla_api::Module,
        bytes: &[u8],
    ) -> Result<Outcome, StoreError> {
        let module = rules::prepare_module(
            module,
            bytes.len() as u64,
            &flotilla_api::objects::digest_of(bytes),
        )?;
        let digest = module.spec.digest.clone();
        let object = Object::Module(module);
        let key = object.key();
        if self.get_object(&key)?.is_some() {
            if self.staged_len(&digest)? != Ok(bytes.len() as u64) {
                // The object survived without (all of) its bytes (a damaged
                // file): put them back; the object, and so the revision, stay.
                self.drop_chunks(&digest)?;
                self.put_chunks(&digest, 0, bytes)?;
            }
            return Ok(Outcome::ModuleStored { existed: true });
        }
        let revision = self.next_revision();
        let object = rules::stamp_create(object, revision);
        self.put_object(&key, &object)?;
        self.drop_chunks(&digest)?;
        self.put_chunks(&digest, 0, bytes)?;
        self.record(EventType::Added, object)?;
        Ok(Outcome::ModuleStored { existed: false })
    }

    /// Makes the staged chunks of `module.spec.digest` a module, where they
    /// are: no byte is copied. Reads them once, a chunk at a time, to check
    /// they join up and hash to the digest.
    fn commit_module(&mut self, module: flotilla_api::Module) -> Result<Outcome, StoreError> {
        let digest = module.spec.digest.clone();
        if !flotilla_api::objects::is_digest(&digest) {
            return Err(StoreError::invalid(format!(
                "module digest {digest:?} is not of the form sha256:<64 lowercase hex digits>"
            )));
        }
        if self.is_stored(&digest)? {
            return Ok(Outcome::ModuleStored { existed: true });
        }
        let (from, to) = chunk_range(&digest);
        let mut sha = Sha256::new();
        let mut len = 0u64;
        for entry in self
            .chunks
            .range(from.as_bytes()..to.as_bytes())
            .map_err(db("reading the upload chunks"))?
        {
            let (k, v) = entry.map_err(db("reading the upload chunks"))?;
            let key = k.value();
            let (_, offset) = parse_chunk_key(key)?;
            if offset != len {
                return Err(StoreError::invalid(format!(
                    "the upload of {digest} has a gap at byte {len}; upload it again"
                )));
            }
            let bytes = unseal("module_chunks", key, v.value())?;
            sha.update(bytes);
            len += bytes.len() as u64;
        }
        let actual = format!("sha256:{}", hex::encode(sha.finalize()));
        let module = rules::prepare_module(module, len, &actual)?;
        let object = Object::Module(module);
        let key = object.key();
        let revision = self.next_revision();
        let object = rules::stamp_create(object, revision);
        self.put_object(&key, &object)?;
        self.record(EventType::Added, object)?;
        Ok(Outcome::ModuleStored { existed: false })
    }

    /// Whether the Module object of `digest` exists: then its chunks are
    /// its bytes, not an upload in progress.
    fn is_stored(&self, digest: &str) -> Result<bool, StoreError> {
        let key = object_key(Kind::Module, "", &module_name(digest));
        Ok(self
            .objects
            .get(key.as_bytes())
            .map_err(db("reading an object"))?
            .is_some())
    }

    /// The pods whose `spec.module` is `digest`, as `namespace/name`.
    /// The objects that run `digest` or make pods that do (templates).
    fn pods_using(&self, digest: &str) -> Result<Vec<String>, StoreError> {
        let mut users = Vec::new();
        for kind in flotilla_api::objects::MODULE_USERS {
            let prefix = key_prefix(kind, None);
            for entry in self
                .objects
                .range(prefix.as_bytes()..)
                .map_err(db("listing module users"))?
            {
                let (k, v) = entry.map_err(db("listing module users"))?;
                let key = k.value();
                if !key.starts_with(prefix.as_bytes()) {
                    break;
                }
                let o: Object = decode_value("objects", key, v.value())?;
                if o.module() == Some(digest) {
                    let m = o.meta();
                    users.push(format!("{}/{}/{}", kind.plural(), m.namespace, m.name));
                }
            }
        }
        Ok(users)
    }

    /// Persists the revision and drops history older than the window of
    /// `keep` revisions; returns whether anything was written (if not, the
    /// transaction need not commit) and the events written, in revision order.
    pub(crate) fn finish(mut self, keep: u64) -> Result<(bool, Vec<WatchEvent>), StoreError> {
        if !self.events.is_empty() {
            self.counters
                .insert(
                    counters::REVISION.as_bytes(),
                    encode_counter(counters::REVISION, self.revision).as_slice(),
                )
                .map_err(db("writing the revision"))?;
        }
        self.compact(keep)?;
        Ok((self.changed, self.events))
    }

    /// Removes history at or below `revision - keep`.
    pub(crate) fn compact(&mut self, keep: u64) -> Result<(), StoreError> {
        let compacted = read_counter(&self.counters, counters::COMPACTED)?;
        let target = self.revision.saturating_sub(keep);
        if target > compacted {
            self.history
                .retain_in(compacted + 1..=target, |_, _| false)
                .map_err(db("compacting the history"))?;
            self.counters
                .insert(
                    counters::COMPACTED.as_bytes(),
                    encode_counter(counters::COMPACTED, target).as_slice(),
                )
                .map_err(db("writing the compacted revision"))?;
            self.changed = true;
        }
        Ok(())
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn get_object(&self, key: &str) -> Result<Option<Object>, StoreError> {
        match self
            .objects
            .get(key.as_bytes())
            .map_err(db("reading an object"))?
        {
            Some(v) => decode_value("objects", key.as_bytes(), v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_object(&mut self, key: &str, object: &Object) -> Result<(), StoreError> {
        let value = encode_value("objects", key.as_bytes(), "an object", object)?;
        self.objects
            .insert(key.as_bytes(), value.as_slice())
            .map_err(db("writing an object"))?;
        self.changed = true;
        Ok(())
    }

    /// Stages one piece of an upload; nothing if the module is stored
    /// (another upload of it finished first: these are the same bytes).
    fn put_chunk(
        &mut self,
        digest: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Outcome, StoreError> {
        if !flotilla_api::objects::is_digest(digest) {
            return Err(StoreError::invalid(format!(
                "{digest:?} is not a sha256:<hex> digest"
            )));
        }
        if bytes.len() > super::UPLOAD_CHUNK {
            return Err(StoreError::invalid(format!(
                "an upload chunk holds at most {} bytes, not {}",
                super::UPLOAD_CHUNK,
                bytes.len()
            )));
        }
        let end = offset.saturating_add(bytes.len() as u64);
        if end > flotilla_api::protocol::MAX_MODULE_SIZE {
            return Err(StoreError::invalid(format!(
                "an upload may not pass {} bytes",
                flotilla_api::protocol::MAX_MODULE_SIZE
            )));
        }
        if self.is_stored(digest)? {
            return Ok(Outcome::Done);
        }
        if offset == 0 {
            self.drop_chunks(digest)?;
        }
        self.put_chunks(digest, offset, bytes)?;
        Ok(Outcome::Done)
    }

    /// Writes `bytes` as the chunks of `digest` from `offset` on, each at
    /// most [`STORED_CHUNK`] bytes.
    fn put_chunks(&mut self, digest: &str, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut at = offset;
        for chunk in bytes.chunks(STORED_CHUNK) {
            let key = chunk_key(digest, at);
            self.chunks
                .insert(
                    key.as_bytes(),
                    seal("module_chunks", key.as_bytes(), chunk).as_slice(),
                )
                .map_err(db("writing a module chunk"))?;
            at += chunk.len() as u64;
            self.changed = true;
        }
        Ok(())
    }

    /// Removes every chunk of `digest`.
    fn drop_chunks(&mut self, digest: &str) -> Result<(), StoreError> {
        let (from, to) = chunk_range(digest);
        let mut removed = false;
        self.chunks
            .retain_in(from.as_bytes()..to.as_bytes(), |_, _| {
                removed = true;
                false
            })
            .map_err(db("removing module chunks"))?;
        self.changed |= removed;
        Ok(())
    }

    /// How many bytes the chunks of `digest` hold from offset 0 on, or
    /// `Err(at)` with the first byte they miss.
    fn staged_len(&self, digest: &str) -> Result<Result<u64, u64>, StoreError> {
        let (from, to) = chunk_range(digest);
        let mut len = 0u64;
        for entry in self
            .chunks
            .range(from.as_bytes()..to.as_bytes())
            .map_err(db("reading module chunks"))?
        {
            let (k, v) = entry.map_err(db("reading module chunks"))?;
            let (_, offset) = parse_chunk_key(k.value())?;
            if offset != len {
                return Ok(Err(len));
            }
            len += unseal("module_chunks", k.value(), v.value())?.len() as u64;
        }
        Ok(Ok(len))
    }

    /// Writes the event of the current revision to the history.
    fn record(&mut self, kind: EventType, object: Object) -> Result<(), StoreError> {
        let event = WatchEvent {
            revision: self.revision,
            kind,
            object,
        };
        let value = encode_value(
            "history",
            &history_key(self.revision),
            "a watch event",
            &event,
        )?;
        self.history
            .insert(self.revision, value.as_slice())
            .map_err(db("writing the history"))?;
        self.events.push(event);
        self.changed = true;
        Ok(())
    }
}

/// Reads a counter (0 when absent).
pub(crate) fn read_counter(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    match table
        .get(key.as_bytes())
        .map_err(db("reading the counters table"))?
    {
        Some(v) => decode_counter(key.as_bytes(), v.value()),
        None => Ok(0),
    }
}
