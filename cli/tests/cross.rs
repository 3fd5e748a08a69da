//! `cross/`: the edge build entry point and what it does with input it
//! cannot use (building a target takes minutes per target; the builds and
//! their sizes are in docs/edge.md), and the bundles of this build: the
//! tarball's install script, the units and config it writes (and a node
//! started from them joining a master; only the units, for an image),
//! uninstalling, and the .deb.

mod common;

use std::path::Path;
use std::process::Command;

fn build_sh(args: &[&str]) -> (i32, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cross/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .expect("run cross/build.sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn build_sh_refuses_what_it_cannot_build_and_says_what_it_can() {
    for (args, says) in [
        (&[][..], "cross/build.sh TARGET [--node-only]"),
        (
            &["riscv64gc-unknown-linux-gnu"][..],
            "unknown target riscv64gc-unknown-linux-gnu",
        ),
        (
            &["aarch64-unknown-linux-gnu", "--small"][..],
            "unknown option --small",
        ),
    ] {
        let (code, err) = build_sh(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        // The usage names every target it builds.
        for target in [
            "aarch64-unknown-linux-gnu",
            "aarch64-unknown-linux-musl",
            "armv7-unknown-linux-gnueabihf",
            "x86_64-unknown-linux-musl",
        ] {
            assert!(
                err.contains(target),
                "{args:?}: {target} missing from {err}"
            );
        }
    }
}

/// Runs `cross/NAME` with `args` (and `env`): exit code, stdout, stderr.
fn script(name: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cross")
        .join(name);
    let mut cmd = Command::new(if name.ends_with("bundle.sh") {
        "bash"
    } else {
        "sh"
    });
    cmd.arg(&path).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the script");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The bundle of this build: the tarball unpacked, and the .deb.
fn bundle(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = dir.join("dist");
    let (code, stdout, err) = script(
        "bundle.sh",
        &[
            "x86_64-unknown-linux-gnu",
            "--binary",
            env!("CARGO_BIN_EXE_flotilla"),
            "--out",
            out.to_str().expect("utf8"),
            "--fast",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    let version = env!("CARGO_PKG_VERSION");
    let tarball = out.join(format!(
        "flotilla-{version}-x86_64-unknown-linux-gnu.tar.gz"
    ));
    let deb = out.join(format!("flotilla_{version}_amd64.deb"));
    assert!(stdout.contains(tarball.to_str().expect("utf8")), "{stdout}");
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("dir");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&unpacked)
        .arg("-xzf")
        .arg(&tarball)
        .status()
        .expect("tar");
    assert!(status.success());
    (
        unpacked.join(format!("flotilla-{version}-x86_64-unknown-linux-gnu")),
        deb,
    )
}

#[test]
fn the_bundle_installs_hardened_units_and_a_config_that_joins_the_master() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (bundle, deb) = bundle(tmp.path());
    let install = bundle.join("install.sh");
    let install = install.to_str().expect("utf8");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec![install];
        all.extend_from_slice(args);
        let out = Command::new("sh")
            .args(&all)
            .envs(env.iter().copied())
            .output()
            .expect("install.sh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // What it cannot use is refused, and nothing is written.
    let root = tmp.path().join("refused");
    let r = root.to_str().expect("utf8");
    for (args, says) in [
        (&["--root", r, "--token", "t"][..], "give the master"),
        (
            &["--root", r, "--master", "10.0.0.1:7443"][..],
            "give a join token",
        ),
        (
            &["--root", r, "--master", "10.0.0.1:7443", "--token", "a;b"][..],
            "characters",
        ),
        (&["--root", r, "--role", "king"][..], "give node or master"),
        (&["--root", r, "--frobnicate"][..], "unknown option"),
    ] {
        let (code, err) = run(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!root.exists(), "a refused install wrote nothing");

    // Into a root with neither master nor token, as an image is built: the
    // binary and the units, enabled, and no settings until its first boot.
    let image = tmp.path().join("image");
    let i = image.to_str().expect("utf8");
    let (code, err) = run(&["--root", i], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(image.join("usr/local/bin/flotilla").exists());
    assert!(image
        .join("etc/systemd/system/multi-user.target.wants/flotilla-node.service")
        .symlink_metadata()
        .is_ok());
    assert!(!image.join("etc/flotilla/node.env").exists());

    // A master for the installed node to join.
    let c = common::Cluster::start("30s");
    let token = c.token();
    let root = tmp.path().join("root");
    let r = root.to_str().expect("utf8");
    // The K3s habit: settings in the environment.
    let (code, err) = run(
        &["--root", r, "--name", "pi-7"],
        &[("FLOTILLA_MASTER", &c.addr), ("FLOTILLA_TOKEN", &token)],
    );
    assert_eq!(code, 0, "{err}");
    let bin = root.join("usr/local/bin/flotilla");
    let unit = read(&root.join("etc/systemd/system/flotilla-node.service"));
    assert!(
        unit.contains("ExecStart=/usr/local/bin/flotilla node --data-dir /var/lib/flotilla/node $FLOTILLA_NODE_ARGS"),
        "{unit}"
    );
    for hardening in [
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "StateDirectory=flotilla",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/flotilla/node.env",
    ] {
        assert!(unit.contains(hardening), "{hardening} missing from {unit}");
    }
    assert!(root
        .join("etc/systemd/system/multi-user.target.wants/flotilla-node.service")
        .symlink_metadata()
        .is_ok());
    let env_path = root.join("etc/flotilla/node.env");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&env_path)
        .expect("env")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token is for root's eyes only");
    let env = read(&env_path);
    let args = env
        .lines()
        .find_map(|l| l.strip_prefix("FLOTILLA_NODE_ARGS="))
        .expect("node args");
    assert_eq!(args, format!("--master {} --name pi-7", c.addr));
    assert!(env.contains(&format!("FLOTILLA_TOKEN={token}")), "{env}");

    // What systemd would run, run: the node joins with the installed
    // binary, flags and token.
    let state = root.join("var/lib/flotilla/node");
    let node = Command::new(&bin)
        .args(["node", "--data-dir"])
        .arg(&state)
        .args(args.split_whitespace())
        .args(common::proxy_args(&[]))
        .env("FLOTILLA_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the installed node");
    let node = Guard(node);
    c.wait_node_ready("pi-7", "Ready", std::time::Duration::from_secs(60));
    drop(node);

    // Installed again without a token: the node joined already.
    let (code, err) = run(&["--root", r, "--master", &c.addr], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!read(&env_path).contains("FLOTILLA_TOKEN"));

    // systemd accepts both units as written (with the bundle's binary path).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let units = tmp.path().join("units");
        std::fs::create_dir_all(&units).expect("dir");
        let mut paths = Vec::new();
        for name in ["flotilla-node.service", "flotilla-master.service"] {
            let text = read(&bundle.join("systemd").join(name))
                .replace("@BINDIR@", bundle.join("bin").to_str().expect("utf8"));
            let p = units.join(name);
            std::fs::write(&p, text).expect("unit");
            paths.push(p);
        }
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&paths)
            .output()
            .expect("systemd-analyze");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Uninstalled: the binary, units and config go; the state stays.
    let (code, _, err) = script("uninstall.sh", &["--root", r], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!bin.exists() && !env_path.exists());
    assert!(!root
        .join("etc/systemd/system/flotilla-node.service")
        .exists());
    assert!(
        state.join("credentials.yaml").exists(),
        "the node's state stays"
    );
    let (code, _, err) = script("uninstall.sh", &["--root", r, "--purge"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!root.join("var/lib/flotilla").exists());

    // The .deb: the same binary and units, for /usr/bin.
    let field = |f: &str| {
        let out = Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(f)
            .output()
            .expect("dpkg-deb");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "flotilla");
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    let contents = String::from_utf8_lossy(&out.stdout);
    for path in [
        "./usr/bin/flotilla",
        "./lib/systemd/system/flotilla-node.service",
        "./lib/systemd/system/flotilla-master.service",
    ] {
        assert!(contents.contains(path), "{path} missing from {contents}");
    }
    let extracted = tmp.path().join("deb");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&extracted)
        .status()
        .expect("dpkg-deb");
    assert!(status.success());
    let unit = read(&extracted.join("lib/systemd/system/flotilla-node.service"));
    assert!(unit.contains("ExecStart=/usr/bin/flotilla node"), "{unit}");
}

/// Kills the child when dropped, so a failed assertion leaves no node behind.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
