//! `flotilla user create` and `flotilla user revoke`: configs of their own
//! for people and scripts, with a role, and taking them back.

use crate::commands::{call, connect, parse_duration, read_config};
use anyhow::{anyhow, bail, Context};
use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::{Identity, Validity};
use flotilla_api::meta::ObjectMeta;
use flotilla_api::objects::user::{Role, User, UserSpec};
use flotilla_api::objects::Resource;
use flotilla_api::protocol::{Request, Response};
use flotilla_api::time::Time;
use flotilla_api::Object;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A user to make, as the command line gives it.
#[derive(Debug)]
pub struct NewUser {
    pub name: String,
    pub role: String,
    pub namespace: String,
    pub lifetime: Option<String>,
}

impl NewUser {
    /// The User object it asks for, checked as the master will check it.
    fn object(&self) -> anyhow::Result<User> {
        let role = Role::parse(&self.role).map_err(|e| anyhow!("--role: {e}"))?;
        let expiration_seconds = match &self.lifetime {
            Some(l) => parse_duration(l).context("--lifetime")?.as_secs().max(1),
            None => 0,
        };
        let user = User {
            metadata: ObjectMeta::named("", &self.name),
            spec: UserSpec {
                role,
                namespace: self.namespace.clone(),
                expiration_seconds,
            },
            ..User::default()
        };
        let errors = user.validate();
        if !errors.is_empty() {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| {
                    let flag = match e.path.as_str() {
                        "metadata.name" => "NAME",
                        "spec.namespace" => "--namespace",
                        "spec.expirationSeconds" => "--lifetime",
                        other => other,
                    };
                    format!("  {flag}: {}", e.message)
                })
                .collect();
            bail!("cannot create user {:?}:\n{}", self.name, lines.join("\n"));
        }
        Ok(user)
    }
}

/// `flotilla user create NAME --role ROLE [-n NS] [--lifetime D] [-o FILE]`.
pub async fn create(
    config: &Path,
    new: NewUser,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let user = new.object()?;
    let out = output.unwrap_or_else(|| PathBuf::from(format!("{}.config", new.name)));
    let to_stdout = out == Path::new("-");
    if !to_stdout && out.exists() {
        bail!(
            "{} exists already and holds someone's credentials, perhaps; choose another file with -o FILE, or remove it first",
            out.display()
        );
    }
    let admin = read_config(config)?;
    let client = connect(config).await?;
    // The master chooses the identity; the request only carries the key.
    let (csr_pem, key_pem) = flotilla_api::identity::new_csr(&Identity::Viewer)?;
    let request = Request::CreateUser {
        user: user.clone(),
        csr_pem,
    };
    let (cert_pem, ca_pem, told) = match call(&client, &request).await? {
        Response::Joined {
            cert_pem,
            ca_pem,
            masters,
        } => (cert_pem, ca_pem, masters),
        other => bail!("unexpected answer {other:?}"),
    };
    // The addresses that work from here first, then any other the cluster has.
    let mut masters = admin.masters.clone();
    masters.extend(told.into_iter().filter(|m| !admin.masters.contains(m)));
    let file = ClientConfigFile {
        cluster: admin.cluster,
        masters,
        ca_pem,
        cert_pem,
        key_pem,
        namespace: user.spec.namespace.clone(),
    };
    let v = Validity::of_pem(&file.cert_pem)?;
    if to_stdout {
        std::io::stdout().write_all(file.render().as_bytes())?;
    } else {
        flotilla_api::net::write_private_file(&out, &file.render())
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let scope = if user.spec.namespace.is_empty() {
        "every namespace".to_string()
    } else {
        format!("namespace {}", user.spec.namespace)
    };
    let place = if to_stdout {
        "the config above".to_string()
    } else {
        format!("its config is {}", out.display())
    };
    eprintln!(
        "user {} created: {} in {scope}; {place}, valid until {} ({}) and renewed as it is used.\n\
         Hand it over privately; it is used with `flotilla --config FILE ...` or as ~/.flotilla/config.",
        new.name,
        user.spec.role,
        v.not_after,
        v.left(Time::now())
    );
    Ok(ExitCode::SUCCESS)
}

/// `flotilla user revoke NAME`.
pub async fn revoke(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    let user = match call(
        &client,
        &Request::RevokeUser {
            name: name.to_string(),
        },
    )
    .await?
    {
        Response::Object(Object::User(u)) => u,
        other => bail!("unexpected answer {other:?}"),
    };
    let at = user.status.revoked.unwrap_or_default();
    println!("user {name} revoked (since {at}): every master refuses its certificates");
    Ok(ExitCode::SUCCESS)
}
