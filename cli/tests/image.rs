//! The edge image (`cross/image.sh`). Its first-boot configuration, run on
//! this host against a directory laid out as the image's root: what it
//! writes from a good `flotilla.conf`, and what it says of a bad one.
//!
//! And the image itself, booted: built from the aarch64 node, given a
//! `flotilla.conf` on its FAT partition as a user would (mtools, the way a
//! laptop writes the card), started in qemu-system-aarch64 (virt machine,
//! UEFI firmware that boots the image's own loader, a user network that
//! reaches the master on this host): the node joins under the configured
//! name and runs a pod with code the master compiled, the token has left
//! the card, and the root partition and file system have grown to the end
//! of a disk larger than the image. It builds a
//! Debian system and boots it under emulation (many minutes), so it runs
//! only with `scripts/test.sh --slow`.

mod common;

use common::{cross_binary, wait_for, Cluster};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cross_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cross")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A directory laid out as the image's root for `firstboot.sh`: install.sh
/// and the units where the image keeps them, the x86_64 binary standing in
/// for the aarch64 one.
fn sysroot(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let lib = root.join("usr/local/lib/flotilla");
    std::fs::create_dir_all(lib.join("bin")).expect("dir");
    std::fs::create_dir_all(lib.join("systemd")).expect("dir");
    std::fs::create_dir_all(root.join("etc")).expect("dir");
    for script in ["install.sh", "uninstall.sh", "image/firstboot.sh"] {
        let from = cross_dir().join(script);
        let to = lib.join(from.file_name().expect("name"));
        std::fs::copy(&from, &to).expect("copy");
    }
    for unit in ["flotilla-node.service", "flotilla-master.service"] {
        std::fs::copy(
            cross_dir().join("systemd").join(unit),
            lib.join("systemd").join(unit),
        )
        .expect("copy");
    }
    std::os::unix::fs::symlink(common::BIN, lib.join("bin/flotilla")).expect("symlink");
    std::fs::write(
        root.join("etc/machine-id"),
        "0123abcd4567ef890123abcd4567ef89\n",
    )
    .expect("id");
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\tflotilla\n",
    )
    .expect("hosts");
    root
}

/// Runs the image's first-boot script on `conf` against `root`: its exit
/// code and what it printed.
fn firstboot(root: &Path, conf: &Path) -> (i32, String) {
    let out = Command::new("sh")
        .arg(root.join("usr/local/lib/flotilla/firstboot.sh"))
        .arg(conf)
        .env("FLOTILLA_SYSROOT", root)
        .output()
        .expect("firstboot.sh");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The image's flotilla.conf with `settings` filled in, as a user edits it.
fn conf_with(settings: &[(&str, &str)]) -> String {
    let mut text = read(&cross_dir().join("image/flotilla.conf"));
    for (key, value) in settings {
        let empty = format!("\n{key}=\n");
        assert!(text.contains(&empty), "{key} missing from flotilla.conf");
        text = text.replace(&empty, &format!("\n{key}={value}\n"));
    }
    text
}

#[test]
fn first_boot_configures_the_node_from_flotilla_conf_and_says_what_is_wrong_with_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = sysroot(tmp.path());
    let boot = tmp.path().join("boot");
    std::fs::create_dir_all(&boot).expect("dir");
    let conf = boot.join("flotilla.conf");
    let errors = boot.join("flotilla-error.txt");
    let env_file = root.join("etc/flotilla/node.env");

    // The file as shipped, and files a user got wrong: refused, with what
    // to do written beside the file, and nothing configured.
    for (text, says) in [
        (conf_with(&[]), "FLOTILLA_MASTER is empty"),
        (
            conf_with(&[("FLOTILLA_MASTER", "10.0.0.1:7443")]),
            "FLOTILLA_TOKEN is empty",
        ),
        (
            conf_with(&[
                ("FLOTILLA_MASTER", "10.0.0.1:7443"),
                ("FLOTILLA_TOKEN", "abc"),
                ("FLOTILLA_NAME", "Pi_Kitchen"),
            ]),
            "lower-case letters, digits and inner dashes",
        ),
        (
            "FLOTILLA_MASTR=10.0.0.1:7443\n".to_string(),
            "unknown setting FLOTILLA_MASTR",
        ),
        ("just words\n".to_string(), "is not KEY=VALUE"),
        (
            conf_with(&[
                ("FLOTILLA_MASTER", "10.0.0.1:7443;reboot"),
                ("FLOTILLA_TOKEN", "abc"),
            ]),
            "characters an address, token or name never has",
        ),
    ] {
        std::fs::write(&conf, &text).expect("conf");
        let (code, out) = firstboot(&root, &conf);
        assert_ne!(code, 0, "{says}: {out}");
        assert!(out.contains(says), "{says}: {out}");
        let written = read(&errors);
        assert!(written.contains(says), "{says}: {written}");
        assert!(!env_file.exists(), "{says}: nothing is configured");
    }

    // A good file, saved by an editor with CR line ends, quotes and a
    // comment after a value: the node is configured, named after the
    // machine id, and the token leaves the card.
    let c = Cluster::start("30s");
    let token = c.token();
    let text = conf_with(&[
        ("FLOTILLA_MASTER", &format!("\"{}\"", c.addr)),
        ("FLOTILLA_TOKEN", &token),
        ("FLOTILLA_ARGS", "--label zone=shed   # where it stands"),
    ])
    .replace('\n', "\r\n");
    std::fs::write(&conf, text).expect("conf");
    let (code, out) = firstboot(&root, &conf);
    assert_eq!(code, 0, "{out}");
    assert!(!errors.exists(), "a success clears the last error");
    let env = read(&env_file);
    let args = env
        .lines()
        .find_map(|l| l.strip_prefix("FLOTILLA_NODE_ARGS="))
        .expect("node args");
    assert_eq!(
        args,
        format!(
            "--master {} --name flotilla-0123abcd --label zone=shed",
            c.addr
        )
    );
    assert!(env.contains(&format!("FLOTILLA_TOKEN={token}")), "{env}");
    assert_eq!(read(&root.join("etc/hostname")).trim(), "flotilla-0123abcd");
    let hosts = read(&root.join("etc/hosts"));
    assert!(hosts.contains("127.0.1.1\tflotilla-0123abcd"), "{hosts}");
    assert!(!hosts.contains("\tflotilla\n"), "{hosts}");
    let left = read(&conf);
    assert!(
        !left.contains(&token),
        "the token stays on the card: {left}"
    );
    assert!(
        left.contains("The join token was used at the first boot"),
        "{left}"
    );
    assert!(left.contains(&c.addr), "the rest of the file stays: {left}");

    // Configured once: a later boot leaves it as it is.
    let (code, out) = firstboot(&root, &conf);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configured already"), "{out}");
    assert_eq!(read(&env_file), env);
}

/// Kills qemu when dropped, so a failed assertion leaves no machine behind.
struct Machine(std::process::Child);

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The root partition (the MBR's second entry) of the disk image `img`, as
/// (first sector, sectors), and the size in bytes of the ext4 file system
/// in it, read from its superblock.
fn root_partition(img: &Path) -> (u64, u64, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).expect("image");
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr).expect("MBR");
    assert_eq!(&mbr[510..], &[0x55, 0xaa], "no MBR");
    let u32_at = |b: &[u8], at: usize| {
        u64::from(u32::from_le_bytes(
            b[at..at + 4].try_into().expect("4 bytes"),
        ))
    };
    let entry = &mbr[446 + 16..446 + 32];
    let (start, sectors) = (u32_at(entry, 8), u32_at(entry, 12));
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(start * 512 + 1024)).expect("seek");
    f.read_exact(&mut sb).expect("superblock");
    assert_eq!(&sb[0x38..0x3a], &[0x53, 0xef], "no ext4 superblock");
    // Cleanly unmounted: its journal needs no recovery (RECOVER, in
    // s_feature_incompat), so the counts below are the final ones.
    assert_eq!(
        u32_at(&sb, 0x60) & 0x4,
        0,
        "the root file system was not cleanly unmounted"
    );
    let blocks = u32_at(&sb, 4) | (u32_at(&sb, 0x150) << 32);
    let block_size = 1024u64 << u32_at(&sb, 24);
    (start, sectors, blocks * block_size)
}

/// mtools' name for the image's first partition (the FAT one at 1 MiB).
fn boot_partition(img: &Path) -> String {
    format!("{}@@1048576", img.display())
}

#[test]
#[ignore = "builds a Debian arm64 image and boots it under emulation: run by scripts/test.sh --slow"]
fn edge_image_boots_in_qemu_and_its_node_joins_the_master_its_boot_partition_names() {
    let bin = cross_binary("FLOTILLA_AARCH64_BIN", "aarch64-unknown-linux-gnu");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dist = tmp.path().join("dist");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(cross_dir().join("image.sh"))
        .arg("--binary")
        .arg(&bin)
        .arg("--out")
        .arg(&dist)
        .stderr(Stdio::inherit())
        .output()
        .expect("cross/image.sh");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cross/image.sh failed: {printed}");
    let built = started.elapsed();
    let name = format!("flotilla-{}-arm64", env!("CARGO_PKG_VERSION"));
    let img = dist.join(format!("{name}.img"));
    let kernel = dist.join(format!("{name}.vmlinuz"));
    let initrd = dist.join(format!("{name}.initrd.img"));
    for p in [&img, &kernel, &initrd] {
        assert!(p.exists(), "{} missing: {printed}", p.display());
    }
    let size = std::fs::metadata(&img).expect("image").len();
    // Written to a larger card: the root grows to its end at the boot.
    let (_, sectors, fs_bytes) = root_partition(&img);
    let card = size + (1 << 30);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(card))
        .expect("a larger card");

    // The user's step: the master's address (as the guest reaches this
    // host) and a token, written to flotilla.conf on the card.
    let c = Cluster::start("30s");
    let token = c.token();
    let port = c.addr.rsplit(':').next().expect("port");
    let conf = c.path("flotilla.conf");
    std::fs::write(
        &conf,
        conf_with(&[
            ("FLOTILLA_MASTER", &format!("10.0.2.2:{port}")),
            ("FLOTILLA_TOKEN", &token),
            ("FLOTILLA_NAME", "pi-image"),
        ]),
    )
    .expect("conf");
    let status = Command::new("mcopy")
        .args(["-o", "-i", &boot_partition(&img)])
        .arg(&conf)
        .arg("::/flotilla.conf")
        .status()
        .expect("mcopy");
    assert!(status.success());

    let console = c.path("console.log");
    let monitor = c.path("monitor.sock");
    let booted = Instant::now();
    let machine = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt",
            "-cpu",
            "cortex-a72",
            "-smp",
            "2",
            "-m",
            "1024",
        ])
        .args(["-display", "none", "-no-reboot"])
        // The monitor's power button shuts the machine down cleanly.
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        // UEFI firmware: the image boots by itself, through its own loader.
        .args(["-bios", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"])
        .arg("-drive")
        .arg(format!("if=none,id=disk,format=raw,file={}", img.display()))
        .args(["-device", "virtio-blk-pci,drive=disk"])
        .args([
            "-netdev",
            "user,id=net",
            "-device",
            "virtio-net-pci,netdev=net",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-aarch64");
    let mut machine = Machine(machine);
    let console_tail = || {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let ready = wait_for(
        "the image's node to be Ready",
        Duration::from_secs(900),
        || {
            if let Ok(Some(status)) = machine.0.try_wait() {
                panic!("qemu stopped ({status}); console:\n{}", console_tail());
            }
            c.get_json("node", "pi-image")
                .filter(|node| node["status"]["ready"] == "Ready")
        },
    );
    let to_ready = booted.elapsed();
    assert_eq!(
        ready["status"]["nodeInfo"]["architecture"], "arm64",
        "{ready}"
    );

    let message = c.hello(
        "hello-image",
        "from-the-image",
        "  nodeSelector: {flotilla.dev/hostname: pi-image}\n",
        Duration::from_secs(600),
    );
    assert!(message.contains("precompiled by the master"), "{message}");

    // The power button: systemd stops the node and unmounts the disk. The
    // monitor stays connected until the machine is off (qemu may drop a
    // command whose sender has gone), and the button is pressed again
    // every 30 s in case the guest was not listening yet.
    let (presses, to_off) = {
        use std::io::Write;
        let mut m = std::os::unix::net::UnixStream::connect(&monitor).expect("qemu monitor");
        let started = Instant::now();
        let mut pressed = 0;
        loop {
            if machine.0.try_wait().ok().flatten().is_some() {
                break (pressed, started.elapsed());
            }
            let since = started.elapsed();
            assert!(
                since < Duration::from_secs(300),
                "the machine did not power off in 300 s ({pressed} presses of its power button); console:\n{}",
                console_tail()
            );
            if since >= Duration::from_secs(30 * pressed) {
                m.write_all(b"system_powerdown\n")
                    .expect("system_powerdown");
                pressed += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    drop(machine);
    let (start, grown, grown_fs) = root_partition(&img);
    assert_eq!(
        (start + grown) * 512,
        card,
        "the root partition does not reach the end of the card (it had {sectors} sectors)"
    );
    assert!(
        grown_fs > fs_bytes && grown_fs + (1 << 20) >= grown * 512,
        "the file system did not grow with its partition: {fs_bytes} -> {grown_fs} bytes in {} bytes",
        grown * 512
    );

    // The token has left the card; no error was written beside it.
    let out = Command::new("mtype")
        .args(["-i", &boot_partition(&img), "::/flotilla.conf"])
        .output()
        .expect("mtype");
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(
        !left.contains(&token),
        "the token stays on the card: {left}"
    );
    assert!(left.contains("FLOTILLA_NAME=pi-image"), "{left}");
    let out = Command::new("mdir")
        .args(["-b", "-i", &boot_partition(&img), "::/"])
        .output()
        .expect("mdir");
    let files = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(!files.contains("flotilla-error"), "{files}");

    println!(
        "edge image: {} MiB (root grown to {} MiB on a {} MiB card), built in {:.0} s; boot to Ready {:.0} s under qemu-system-aarch64 (TCG); off {:.0} s after the first of {presses} presses of its power button",
        size / (1 << 20),
        grown_fs >> 20,
        card >> 20,
        built.as_secs_f64(),
        to_ready.as_secs_f64(),
        to_off.as_secs_f64()
    );
}
