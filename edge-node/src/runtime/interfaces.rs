//! The WASI interfaces the node's runtime gives guests, less those its
//! operator withholds (`flotilla node --deny <prefix>`).
//!
//! `p2_table` is the one place that says what a node provides: the
//! runtime links the WASI p2 interfaces from it, one by one, and the node
//! reports the same names as `Node.status.interfaces` ([`provided`]), so
//! what the scheduler reads is what a guest gets. A withheld interface is
//! not linked at all: a component importing it cannot be instantiated.
//! WASI p1 (`wasi_snapshot_preview1`) is linked whole by wasmtime-wasi;
//! when sockets are withheld its four socket functions are shadowed by
//! stubs that trap, and a module importing them is refused before it
//! starts (`Deny::refusal`), as is a component importing a withheld
//! interface, with a message that names the flag.

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random, sockets};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView as _};
use wasmtime_wasi::WasiView;

/// The import module of WASI p1 programs, linked whole by wasmtime-wasi's
/// `p1::add_to_linker_async`.
pub const WASI_P1: &str = "wasi_snapshot_preview1";
/// Listed while sockets are not withheld: the master lists it among the
/// imports of a p1 module that uses [`P1_SOCKET_FUNCTIONS`], which have no
/// interface name of their own.
pub const SOCKETS: &str = "wasi:sockets";
/// The WASI p1 socket functions, with their number of `i32` parameters
/// (`witx/p1/wasi_snapshot_preview1.witx`; each returns an `i32` errno).
pub const P1_SOCKET_FUNCTIONS: [(&str, usize); 4] = [
    ("sock_accept", 3),
    ("sock_recv", 6),
    ("sock_send", 5),
    ("sock_shutdown", 2),
];
/// The newest WASI 0.2 release wasmtime-wasi 48 implements (its WIT
/// packages are `wasi:*@0.2.12`). wasmtime's linker serves an import of any
/// 0.2.x version with it: `wasi:cli/stdout@0.2.3` links to
/// `wasi:cli/stdout@0.2.12`.
pub const WASI_P2_VERSION: &str = "0.2.12";

/// The wasi:http interfaces an http pod imports beside WASI p2, at
/// [`WASI_P2_VERSION`] (wasmtime-wasi-http 48's `wasi:http@0.2.12`).
pub const HTTP_INTERFACES: [&str; 2] = ["wasi:http/outgoing-handler", "wasi:http/types"];

/// How an interface is added to a linker.
type Link<T> = fn(&mut Linker<T>) -> wasmtime::Result<()>;

/// wasmtime-wasi's `wasi:io` host implementations work on the resource table alone.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// Every WASI p2 interface the node links for guests, sorted, and how.
///
/// This is exactly what wasmtime-wasi 48.0.8's `p2::add_to_linker_async`
/// links (`src/p2/mod.rs`: `add_async_io_to_linker`,
/// `add_nonblocking_to_linker`, `add_to_linker_with_options_async`, with
/// default `LinkOptions`), in the same calls, but one interface at a time
/// so that withheld ones can be left out. Not linked there, so not here:
/// `wasi:clocks/timezone` (`@unstable`) and `wasi:cli/run` (a guest's
/// export). The test `the_table_links_what_wasmtime_wasi_links` checks the
/// table against wasmtime-wasi; revisit it when wasmtime is upgraded.
fn p2_table<T: WasiView>() -> [(&'static str, Link<T>); 27] {
    [
        ("wasi:cli/environment", |l| {
            cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/exit", |l| {
            cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/stderr", |l| {
            cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/stdin", |l| {
            cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/stdout", |l| {
            cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-input", |l| {
            cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-output", |l| {
            cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-stderr", |l| {
            cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-stdin", |l| {
            cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-stdout", |l| {
            cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:clocks/monotonic-clock", |l| {
            clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)
        }),
        ("wasi:clocks/wall-clock", |l| {
            clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)
        }),
        ("wasi:filesystem/preopens", |l| {
            filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)
        }),
        ("wasi:filesystem/types", |l| {
            filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)
        }),
        ("wasi:io/error", |l| {
            io::error::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)
        }),
        ("wasi:io/poll", |l| {
            io::poll::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)
        }),
        ("wasi:io/streams", |l| {
            io::streams::add_to_linker::<T, HasIo>(l, |t| t.ctx().table)
        }),
        ("wasi:random/insecure", |l| {
            random::insecure::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())
        }),
        ("wasi:random/insecure-seed", |l| {
            random::insecure_seed::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())
        }),
        ("wasi:random/random", |l| {
            random::random::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())
        }),
        ("wasi:sockets/instance-network", |l| {
            sockets::instance_network::add_to_linker::<T, WasiSockets>(l, T::sockets)
        }),
        ("wasi:sockets/ip-name-lookup", |l| {
            sockets::ip_name_lookup::add_to_linker::<T, WasiSockets>(l, T::sockets)
        }),
        ("wasi:sockets/network", |l| {
            let options = sockets::network::LinkOptions::default();
            sockets::network::add_to_linker::<T, WasiSockets>(l, &options, T::sockets)
        }),
        ("wasi:sockets/tcp", |l| {
            sockets::tcp::add_to_linker::<T, WasiSockets>(l, T::sockets)
        }),
        ("wasi:sockets/tcp-create-socket", |l| {
            sockets::tcp_create_socket::add_to_linker::<T, WasiSockets>(l, T::sockets)
        }),
        ("wasi:sockets/udp", |l| {
            sockets::udp::add_to_linker::<T, WasiSockets>(l, T::sockets)
        }),
        ("wasi:sockets/udp-create-socket", |l| {
            sockets::udp_create_socket::add_to_linker::<T, WasiSockets>(l, T::sockets)
        }),
    ]
}

/// Every interface a node's runtime can give guests, sorted: the WASI p2
/// interfaces at [`WASI_P2_VERSION`], [`SOCKETS`] and [`WASI_P1`].
pub fn all() -> Vec<String> {
    let mut out: Vec<String> = p2_table::<super::P2State>()
        .iter()
        .map(|(name, _)| format!("{name}@{WASI_P2_VERSION}"))
        .collect();
    out.extend(
        HTTP_INTERFACES
            .iter()
            .map(|name| format!("{name}@{WASI_P2_VERSION}")),
    );
    out.push(SOCKETS.to_string());
    out.push(WASI_P1.to_string());
    out.sort();
    out
}

/// What the node reports as `Node.status.interfaces`: [`all`] less what
/// `deny` withholds.
pub fn provided(deny: &Deny) -> Vec<String> {
    all().into_iter().filter(|i| !deny.denies(i)).collect()
}

/// Links the WASI p2 interfaces that `deny` does not withhold.
pub(super) fn add_p2_to_linker<T: WasiView>(
    linker: &mut Linker<T>,
    deny: &Deny,
) -> wasmtime::Result<()> {
    for (name, link) in p2_table::<T>() {
        if !deny.denies(&format!("{name}@{WASI_P2_VERSION}")) {
            link(linker)?;
        }
    }
    Ok(())
}

/// Links what an http pod's instances get: the WASI p2 interfaces that
/// `deny` does not withhold, and wasi:http unless it withholds that (both
/// of its interfaces go together: one is no use without the other).
pub(super) fn add_http_to_linker<T>(linker: &mut Linker<T>, deny: &Deny) -> wasmtime::Result<()>
where
    T: WasiView + wasmtime_wasi_http::WasiHttpView + 'static,
{
    add_p2_to_linker(linker, deny)?;
    let denied = HTTP_INTERFACES
        .iter()
        .any(|name| deny.denies(&format!("{name}@{WASI_P2_VERSION}")));
    if !denied {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    }
    Ok(())
}

/// Links WASI p1 unless `deny` withholds it; with sockets withheld, its
/// socket functions trap instead (defence in depth: [`Deny::refusal`]
/// refuses a module importing them before it starts).
pub(super) fn add_p1_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::Linker<T>,
    deny: &Deny,
    get: fn(&mut T) -> &mut wasmtime_wasi::p1::WasiP1Ctx,
) -> wasmtime::Result<()> {
    if deny.denies(WASI_P1) {
        return Ok(());
    }
    wasmtime_wasi::p1::add_to_linker_async(linker, get)?;
    if deny.denies(SOCKETS) {
        linker.allow_shadowing(true);
        for (name, params) in P1_SOCKET_FUNCTIONS {
            let ty = wasmtime::FuncType::new(
                linker.engine(),
                vec![wasmtime::ValType::I32; params],
                [wasmtime::ValType::I32],
            );
            linker.func_new(WASI_P1, name, ty, move |_, _, _| {
                Err(wasmtime::Error::msg(format!(
                    "{WASI_P1}::{name} is denied by the node's operator (--deny {SOCKETS})"
                )))
            })?;
        }
        linker.allow_shadowing(false);
    }
    Ok(())
}

/// Interface-name prefixes the node's operator withholds from guests
/// (`flotilla node --deny`). Empty: nothing is withheld.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deny {
    prefixes: Vec<String>,
}

/// Why a `--deny` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyError {
    #[error("--deny needs an interface or a prefix of one, e.g. wasi:sockets")]
    Empty,
    #[error(
        "--deny {0}: name interfaces without a version (e.g. wasi:sockets/tcp): \
         a node withholds every version of what it denies"
    )]
    Versioned(String),
    #[error("--deny {prefix} matches none of the interfaces this node provides: {}", all.join(", "))]
    MatchesNothing { prefix: String, all: Vec<String> },
}

impl Deny {
    /// Withholds every interface that one of `prefixes` names: a whole
    /// name (`wasi:sockets/tcp`), or a prefix of names that ends where a
    /// name part does (`wasi:sockets`, `wasi:`, but not `wasi:sock`). A
    /// prefix that matches nothing this node could provide is refused: a
    /// typo would otherwise withhold nothing.
    pub fn new(prefixes: impl IntoIterator<Item = String>) -> Result<Deny, DenyError> {
        let all = all();
        let mut out = Vec::new();
        for p in prefixes {
            let p = p.trim().trim_end_matches('/').to_string();
            if p.is_empty() {
                return Err(DenyError::Empty);
            }
            if p.contains('@') {
                return Err(DenyError::Versioned(p));
            }
            if !all.iter().any(|i| matches(&p, i)) {
                return Err(DenyError::MatchesNothing { prefix: p, all });
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(Deny { prefixes: out })
    }

    /// The prefixes, trimmed, without a trailing `/` or repeats.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether `name` (an interface, possibly versioned, a core module name,
    /// or [`SOCKETS`]) is withheld.
    pub fn denies(&self, name: &str) -> bool {
        self.denied_by(name).is_some()
    }

    /// The prefix that withholds `name`, if one does.
    fn denied_by(&self, name: &str) -> Option<&str> {
        self.prefixes
            .iter()
            .map(String::as_str)
            .find(|p| matches(p, name))
    }

    /// Why `program` may not run here: the first thing it imports that
    /// this node withholds, said so that the pod's message tells the user
    /// what to do. Checked before instantiation, where the missing import
    /// would otherwise surface as a bare link error.
    pub(super) fn refusal(
        &self,
        program: &super::Program,
        engine: &wasmtime::Engine,
    ) -> Option<String> {
        if self.prefixes.is_empty() {
            return None;
        }
        let refuse = |import: &str, prefix: &str| {
            format!(
                "the program imports {import}, which is denied by the node's operator \
                 (flotilla node --deny {prefix}); run it on a node that provides it"
            )
        };
        match program {
            super::Program::Component(c) => {
                let ty = c.component_type();
                let mut names: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
                names.sort_unstable();
                names
                    .into_iter()
                    .find_map(|n| self.denied_by(n).map(|p| refuse(n, p)))
            }
            super::Program::Module(m) => m.imports().find_map(|i| {
                if i.module() != WASI_P1 {
                    return None;
                }
                let import = format!("{WASI_P1}::{}", i.name());
                if let Some(p) = self.denied_by(WASI_P1) {
                    return Some(refuse(&import, p));
                }
                let socket = P1_SOCKET_FUNCTIONS.iter().any(|(f, _)| *f == i.name());
                socket
                    .then(|| self.denied_by(SOCKETS))
                    .flatten()
                    .map(|p| refuse(&import, p))
            }),
        }
    }
}

/// Whether `prefix` names `name` or a family it belongs to: equal, or a
/// prefix that ends at a boundary of the name's parts (`:`, `/`, `@`).
fn matches(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    rest.is_empty() || prefix.ends_with([':', '/']) || rest.starts_with([':', '/', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(prefixes: &[&str]) -> Deny {
        Deny::new(prefixes.iter().map(|p| p.to_string())).expect("valid --deny")
    }

    #[test]
    fn the_list_is_sorted_without_duplicates() {
        let all = all();
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(all, sorted);
        assert_eq!(all.len(), 31);
        let names: Vec<&str> = p2_table::<super::super::P2State>()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "the table is kept sorted");
        assert!(all.contains(&"wasi:io/streams@0.2.12".to_string()));
        assert!(all.contains(&WASI_P1.to_string()));
        assert!(all.contains(&SOCKETS.to_string()));
    }

    #[test]
    fn prefixes_match_at_name_boundaries() {
        // (prefix, name, withheld)
        let cases = [
            ("wasi:sockets", "wasi:sockets/tcp@0.2.12", true),
            ("wasi:sockets", "wasi:sockets/tcp@0.2.3", true),
            ("wasi:sockets", SOCKETS, true),
            ("wasi:sockets", "wasi:cli/stdout@0.2.12", false),
            ("wasi:sockets/tcp", "wasi:sockets/tcp@0.2.12", true),
            (
                "wasi:sockets/tcp",
                "wasi:sockets/tcp-create-socket@0.2.12",
                false,
            ),
            ("wasi:sockets/tcp", SOCKETS, false),
            ("wasi:", "wasi:io/poll@0.2.12", true),
            ("wasi", "wasi:io/poll@0.2.12", true),
            ("wasi", WASI_P1, false),
            (WASI_P1, WASI_P1, true),
            ("wasi:sock", "wasi:sockets/tcp@0.2.12", false),
        ];
        for (prefix, name, want) in cases {
            assert_eq!(matches(prefix, name), want, "{prefix} {name}");
        }
    }

    #[test]
    fn deny_withholds_from_the_reported_list() {
        let all = all();
        assert_eq!(provided(&Deny::default()), all);
        let no_sockets = provided(&deny(&["wasi:sockets"]));
        assert!(no_sockets.iter().all(|i| !i.starts_with("wasi:sockets")));
        assert_eq!(no_sockets.len(), all.len() - 8);
        let no_tcp = provided(&deny(&["wasi:sockets/tcp/"]));
        assert!(!no_tcp.contains(&"wasi:sockets/tcp@0.2.12".to_string()));
        assert!(no_tcp.contains(&"wasi:sockets/tcp-create-socket@0.2.12".to_string()));
        assert!(no_tcp.contains(&SOCKETS.to_string()));
        // `wasi` is every `wasi:` name, the sockets marker included, not p1.
        assert_eq!(provided(&deny(&["wasi"])), vec![WASI_P1.to_string()]);
        assert!(provided(&deny(&[WASI_P1, "wasi"])).is_empty());
    }

    #[test]
    fn bad_deny_values_are_refused() {
        let bad = |p: &str| Deny::new([p.to_string()]).unwrap_err();
        assert_eq!(bad(" "), DenyError::Empty);
        assert!(matches!(
            bad("wasi:sockets/tcp@0.2.12"),
            DenyError::Versioned(_)
        ));
        assert!(matches!(
            bad("wasi:socket"),
            DenyError::MatchesNothing { .. }
        ));
        assert!(matches!(bad("wasi:htp"), DenyError::MatchesNothing { .. }));
        assert!(bad("wasi:htp")
            .to_string()
            .contains("wasi:cli/stdout@0.2.12"));
        // wasi:http is linked for http pods, and may be withheld.
        assert!(Deny::new(["wasi:http".to_string()]).is_ok());
        assert_eq!(
            deny(&["wasi:sockets", "wasi:sockets/"]).prefixes(),
            ["wasi:sockets"]
        );
    }

    /// Whether `linker` defines `name` itself (not a semver-compatible
    /// name): defining it again is refused where shadowing is not allowed.
    fn defines<T>(linker: &Linker<T>, name: &str) -> bool {
        let mut probe = linker.clone();
        let ty = wasmtime::component::ResourceType::host::<()>();
        let taken = probe.root().resource(name, ty, |_, _| Ok(())).is_err();
        taken
    }

    #[test]
    fn the_table_links_what_wasmtime_wasi_links() {
        type State = super::super::P2State;
        let engine = wasmtime::Engine::default();
        let mut stock = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut stock).expect("wasmtime-wasi links");
        let mut ours = Linker::<State>::new(&engine);
        add_p2_to_linker(&mut ours, &Deny::default()).expect("the table links");
        let mut denying = Linker::<State>::new(&engine);
        add_p2_to_linker(&mut denying, &deny(&["wasi:sockets"])).expect("the table links");
        // Every interface of the WASI packages wasmtime-wasi implements
        // (its WIT, `src/p2/wit/deps`): defined by wasmtime-wasi exactly
        // when it is on our list.
        let packages: [(&str, &[&str]); 6] = [
            (
                "cli",
                &[
                    "environment",
                    "exit",
                    "run",
                    "stdin",
                    "stdout",
                    "stderr",
                    "terminal-input",
                    "terminal-output",
                    "terminal-stdin",
                    "terminal-stdout",
                    "terminal-stderr",
                ],
            ),
            ("clocks", &["monotonic-clock", "wall-clock", "timezone"]),
            ("filesystem", &["types", "preopens"]),
            ("io", &["error", "poll", "streams"]),
            ("random", &["random", "insecure", "insecure-seed"]),
            (
                "sockets",
                &[
                    "network",
                    "instance-network",
                    "udp",
                    "udp-create-socket",
                    "tcp",
                    "tcp-create-socket",
                    "ip-name-lookup",
                ],
            ),
        ];
        let listed = all();
        let mut seen = 0;
        for (package, interfaces) in packages {
            for interface in interfaces {
                let name = format!("wasi:{package}/{interface}@{WASI_P2_VERSION}");
                let on_list = listed.contains(&name);
                seen += usize::from(on_list);
                assert_eq!(defines(&stock, &name), on_list, "wasmtime-wasi and {name}");
                assert_eq!(defines(&ours, &name), on_list, "our table and {name}");
                let withheld = package == "sockets";
                assert_eq!(
                    defines(&denying, &name),
                    on_list && !withheld,
                    "--deny wasi:sockets and {name}"
                );
            }
        }
        assert_eq!(
            seen,
            p2_table::<State>().len(),
            "the list holds nothing else"
        );
    }

    #[test]
    fn the_sample_workloads_import_only_what_nodes_provide() {
        let engine = wasmtime::Engine::default();
        let listed = all();
        let mut linker = Linker::<super::super::http::HttpState>::new(&engine);
        add_http_to_linker(&mut linker, &Deny::default()).expect("links");
        for name in flotilla_workloads::NAMES {
            let path = flotilla_workloads::path(name);
            let c = wasmtime::component::Component::from_file(&engine, &path)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            for (import, _) in c.component_type().imports(&engine) {
                // Listed at a 0.2 version as new or newer, as the scheduler matches.
                let (base, version) = import.split_once('@').unwrap_or((import, ""));
                let patch = version
                    .strip_prefix("0.2.")
                    .and_then(|p| p.parse::<u32>().ok());
                let ours = WASI_P2_VERSION
                    .strip_prefix("0.2.")
                    .and_then(|p| p.parse().ok());
                assert!(patch <= ours && patch.is_some(), "{name} imports {import}");
                assert!(
                    listed.contains(&format!("{base}@{WASI_P2_VERSION}")),
                    "{name} imports {import}, which nodes do not list"
                );
            }
            linker
                .instantiate_pre(&c)
                .unwrap_or_else(|e| panic!("{name} does not link: {e:#}"));
        }
    }

    /// A component importing an instance named `name` that it asks
    /// nothing of, so that only a refusal can stop it before it is found
    /// to have no `wasi:cli/run`.
    fn component_importing(name: &str) -> Vec<u8> {
        let mut imports = vec![0x01, 0x00, name.len() as u8];
        imports.extend_from_slice(name.as_bytes());
        imports.extend([0x05, 0x00]); // an instance of type 0
        let mut out = b"\0asm\x0d\0\x01\0".to_vec();
        out.extend([0x07, 0x03, 0x01, 0x42, 0x00]); // type 0: instance {}
        out.push(0x0a);
        out.push(imports.len() as u8);
        out.extend(imports);
        out
    }

    /// A core module importing `wasi_snapshot_preview1::sock_accept` whose
    /// `_start` returns at once without calling it.
    const P1_SOCKET_MODULE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        // types: 0 = (i32, i32, i32) -> i32, 1 = () -> ()
        0x01, 0x0b, 0x02, 0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x01, 0x7f, 0x60, 0x00, 0x00,
        // import wasi_snapshot_preview1::sock_accept, of type 0
        0x02, 0x26, 0x01, 0x16, b'w', b'a', b's', b'i', b'_', b's', b'n', b'a', b'p', b's', b'h',
        b'o', b't', b'_', b'p', b'r', b'e', b'v', b'i', b'e', b'w', b'1', 0x0b, b's', b'o', b'c',
        b'k', b'_', b'a', b'c', b'c', b'e', b'p', b't', 0x00, 0x00, 0x03, 0x02, 0x01,
        0x01, // one function of type 1
        0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x01, // export
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // body: end
    ];

    struct Discard;

    impl super::super::LogSink for Discard {
        fn write(&self, _: super::super::LogStream, _: &[u8]) {}
    }

    /// How `wasm` runs on a runtime that withholds `denied`.
    async fn run_denying(denied: &[&str], wasm: &[u8]) -> super::super::RunOutcome {
        let dir = tempfile::tempdir().expect("tmp");
        let profile = super::super::device::for_this_machine().expect("profile");
        let rt = super::super::Runtime::build(
            &dir.path().join("c"),
            &deny(denied),
            &profile.code,
            0,
            |_| super::super::Compiler::InProcess,
        )
        .expect("runtime");
        let (program, _) = rt.load("sha256:test", wasm).expect("compiles");
        let spec = super::super::RunSpec::default();
        rt.run(&program, spec, std::sync::Arc::new(Discard)).await
    }

    #[tokio::test]
    async fn a_guest_importing_a_denied_interface_is_refused_and_says_why() {
        use super::super::RunOutcome;
        let tcp = component_importing("wasi:sockets/tcp@0.2.3");
        let refused = |outcome: &RunOutcome, import: &str, flag: &str| match outcome {
            RunOutcome::Failed { reason, message } => {
                reason == "StartError"
                    && message.contains(&format!("imports {import}, which is denied"))
                    && message.contains(&format!("--deny {flag}"))
            }
            RunOutcome::Exited(_) => false,
        };
        // (withheld, program, refused as: import, flag)
        #[allow(clippy::type_complexity)]
        let cases: [(&[&str], &[u8], Option<(&str, &str)>); 7] = [
            (&[], &tcp, None),
            (
                &["wasi:sockets"],
                &tcp,
                Some(("wasi:sockets/tcp@0.2.3", "wasi:sockets")),
            ),
            (
                &["wasi:sockets/tcp"],
                &tcp,
                Some(("wasi:sockets/tcp@0.2.3", "wasi:sockets/tcp")),
            ),
            (&["wasi:sockets/udp"], &tcp, None),
            (&[], P1_SOCKET_MODULE, None),
            (
                &["wasi:sockets"],
                P1_SOCKET_MODULE,
                Some(("wasi_snapshot_preview1::sock_accept", "wasi:sockets")),
            ),
            (
                &[WASI_P1],
                P1_SOCKET_MODULE,
                Some(("wasi_snapshot_preview1::sock_accept", WASI_P1)),
            ),
        ];
        for (denied, wasm, want) in cases {
            let outcome = run_denying(denied, wasm).await;
            match want {
                Some((import, flag)) => {
                    assert!(refused(&outcome, import, flag), "{denied:?}: {outcome:?}")
                }
                None => assert!(!refused(&outcome, "", ""), "{denied:?}: {outcome:?}"),
            }
        }
        // The p1 module runs where sockets are not withheld.
        assert_eq!(
            run_denying(&[], P1_SOCKET_MODULE).await,
            RunOutcome::Exited(0)
        );
    }

    #[tokio::test]
    async fn denied_p1_socket_functions_trap() {
        use super::super::{limits::Limiter, P1State};
        let profile = super::super::device::for_this_machine().expect("profile");
        let config = super::super::compile::engine_config(&profile.code).expect("config");
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let mut linker = wasmtime::Linker::<P1State>::new(&engine);
        add_p1_to_linker(&mut linker, &deny(&["wasi:sockets"]), |s| &mut s.wasi).expect("links");
        let module = wasmtime::Module::new(&engine, P1_SOCKET_MODULE).expect("module");
        let state = P1State {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build_p1(),
            limiter: Limiter::new(None),
        };
        let mut store = wasmtime::Store::new(&engine, state);
        // The module links against the stub (and does not call it)...
        linker
            .instantiate_async(&mut store, &module)
            .await
            .expect("the stub links");
        // ...which traps when called.
        let stub = linker
            .get(&mut store, WASI_P1, "sock_accept")
            .ok()
            .and_then(|e| e.into_func())
            .expect("sock_accept is defined");
        let mut out = [wasmtime::Val::I32(0)];
        let err = stub
            .call_async(
                &mut store,
                &[
                    wasmtime::Val::I32(3),
                    wasmtime::Val::I32(0),
                    wasmtime::Val::I32(0),
                ],
                &mut out,
            )
            .await
            .expect_err("denied");
        assert!(
            format!("{err:#}").contains("denied by the node's operator"),
            "{err:#}"
        );
    }
}
