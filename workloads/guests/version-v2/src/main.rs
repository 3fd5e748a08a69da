//! The `version` sample, release v2 (see ../../version.rs).

#[path = "../../version.rs"]
mod version;

fn main() {
    version::run("v2");
}
