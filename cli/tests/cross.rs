//! `cross/build.sh`, the edge build entry point: what it does with input it
//! cannot use. (Building a target takes minutes per target; the builds and
//! their sizes are in docs/edge.md.)

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
