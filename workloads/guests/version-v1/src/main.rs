//! The `version` sample, release v1 (see ../../version.rs).

#[path = "../../version.rs"]
mod version;

fn main() {
    version::run("v1");
}
