//! Founding a cluster from a backup (`flotilla master --restore`): the
//! backup is read and checked before anything is written, then its contents
//! go through raft into the new cluster.

use crate::{raft, store, MasterConfig, MasterError};

/// Reads and checks a backup before anything is written.
pub(crate) fn read_backup(
    path: &std::path::Path,
    config: &MasterConfig,
) -> Result<store::Image, MasterError> {
    if config.join.is_some() {
        return Err(MasterError::Config(
            "--restore founds a new cluster; it cannot be combined with --join".into(),
        ));
    }
    if config.data_dir.join("state.redb").exists() {
        return Err(MasterError::Config(format!(
            "--restore needs a new data directory; {} already holds a cluster's state",
            config.data_dir.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| MasterError::DataDir {
        path: path.to_path_buf(),
        source,
    })?;
    store::decode_backup(&bytes).map_err(|source| MasterError::Backup {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a backup's contents through raft into the new cluster this master
/// just founded: modules (in chunks when big), then every other object,
/// then the join tokens. Objects keep their uids and creation times; their
/// resourceVersions are new (clients relist after a restore).
pub(crate) async fn restore(raft: &raft::Raft, image: store::Image) -> Result<(), MasterError> {
    use flotilla_api::objects::module_name;
    use store::Command;
    let fail = |e: store::StoreError| MasterError::Raft {
        doing: "restoring the backup",
        source: Box::new(e),
    };
    let (mut modules, mut others) = (std::collections::HashMap::new(), Vec::new());
    for object in image.objects {
        match object {
            flotilla_api::Object::Module(m) => {
                modules.insert(m.metadata.name.clone(), m);
            }
            other => others.push(other),
        }
    }
    let count = (modules.len(), others.len(), image.tokens.len());
    for (digest, bytes) in image.modules {
        let Some(module) = modules.remove(&module_name(&digest)) else {
            continue;
        };
        if bytes.len() <= store::UPLOAD_CHUNK {
            raft::propose(raft, Command::PutModule { module, bytes })
                .await
                .map_err(fail)?;
            continue;
        }
        for (i, chunk) in bytes.chunks(store::UPLOAD_CHUNK).enumerate() {
            let cmd = Command::PutModuleChunk {
                digest: digest.clone(),
                offset: (i * store::UPLOAD_CHUNK) as u64,
                bytes: chunk.to_vec(),
            };
            raft::propose(raft, cmd).await.map_err(fail)?;
        }
        raft::propose(raft, Command::CommitModule { module })
            .await
            .map_err(fail)?;
    }
    for object in others {
        raft::propose(raft, Command::Create { object })
            .await
            .map_err(fail)?;
    }
    for record in image.tokens {
        raft::propose(raft, Command::PutToken { record })
            .await
            .map_err(fail)?;
    }
    tracing::info!(
        modules = count.0,
        objects = count.1,
        tokens = count.2,
        "restored the backup"
    );
    Ok(())
}
