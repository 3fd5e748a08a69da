//! Checks that an uploaded module is WebAssembly — a core module or a
//! component — before the master stores it. Bytes that are not would be
//! fetched by nodes and fail there, pod after pod; refused at upload, the
//! user learns at once and nothing is stored.
//!
//! The check is wasmparser's validator with every proposal enabled: it asks
//! "is this WebAssembly?", not "can a node run it?". Whether a node's engine
//! supports what a module uses is the node's judgement: a pod whose module
//! does not compile there fails with reason `InvalidModule`.
//!
//! The check also reads what the binary imports ([`Checked::imports`]), so
//! that the scheduler can place its pods only on nodes whose runtime
//! provides all of it (`Node.status.interfaces`).

use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// The import module of WASI p1 (preview 1) programs.
pub const WASI_P1: &str = "wasi_snapshot_preview1";
/// The WASI p1 functions that use sockets. A core module importing any of
/// them also imports [`SOCKETS`], so a node that withholds sockets
/// (`flotilla node --deny wasi:sockets`) is avoided for p1 programs too.
pub const P1_SOCKET_FUNCTIONS: [&str; 4] =
    ["sock_accept", "sock_recv", "sock_send", "sock_shutdown"];
/// The family marker a node lists when it provides sockets to guests.
pub const SOCKETS: &str = "wasi:sockets";

/// The kind of a WebAssembly binary, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A core module (WASI p1 programs).
    Module,
    /// A component (WASI p2 programs).
    Component,
}

/// The export by which a component serves HTTP requests (any 0.2 version).
pub const HTTP_HANDLER: &str = "wasi:http/incoming-handler@";
/// The export by which a component runs as a command.
pub const CLI_RUN: &str = "wasi:cli/run@";

/// What a program does once started, from what it exports: a command runs
/// to its end; an http component serves requests until stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A core module's `_start`, or a component's `wasi:cli/run`.
    Command,
    /// A component exporting `wasi:http/incoming-handler`.
    Http,
}

impl Workload {
    /// As `Module.status.workload` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Command => "command",
            Workload::Http => "http",
        }
    }
}

/// Why some bytes are not WebAssembly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NotWasm {
    pub reason: String,
}

fn not_wasm(reason: impl Into<String>) -> NotWasm {
    NotWasm {
        reason: reason.into(),
    }
}

/// Reads the 8-byte header: the `\0asm` magic, a 16-bit version and a
/// 16-bit layer (0: core module, 1: component), little-endian. Cheap: the
/// master checks it on the first bytes of an upload.
pub fn check_header(bytes: &[u8]) -> Result<WasmKind, NotWasm> {
    match bytes {
        [0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00, ..] => Ok(WasmKind::Module),
        // Components are still versioned by draft; the validator checks which.
        [0x00, b'a', b's', b'm', _, _, 0x01, 0x00, ..] => Ok(WasmKind::Component),
        [0x00, b'a', b's', b'm', v0, v1, 0x00, 0x00, ..] => Err(not_wasm(format!(
            "core module version {} is not 1",
            u16::from_le_bytes([*v0, *v1])
        ))),
        [0x00, b'a', b's', b'm', _, _, l0, l1, ..] => Err(not_wasm(format!(
            "unknown layer {} (0 is a core module, 1 a component)",
            u16::from_le_bytes([*l0, *l1])
        ))),
        [0x00, b'a', b's', b'm', ..] => Err(not_wasm("the header is cut short")),
        [0x7f, b'E', b'L', b'F', ..] => Err(not_wasm(
            "it is native code (ELF), such as a program built for the host or a precompiled .cwasm",
        )),
        _ if bytes.trim_ascii_start().starts_with(b"(") => Err(not_wasm(
            "it looks like WebAssembly text (.wat); send the binary",
        )),
        _ => Err(not_wasm("it does not start with the \\0asm magic")),
    }
}

/// What [`check`] read in a valid binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub kind: WasmKind,
    /// What the binary needs from its host, sorted and without duplicates:
    /// for a component, the names of its own imports
    /// (`wasi:cli/environment@0.2.3`), not those of the modules and
    /// components nested in it, which the component itself provides; for a
    /// core module, the distinct module names of its imports
    /// (`wasi_snapshot_preview1`), plus [`SOCKETS`] if it imports one of the
    /// [`P1_SOCKET_FUNCTIONS`].
    pub imports: Vec<String>,
    /// What it does once started; an http component that is also a
    /// command serves HTTP.
    pub workload: Workload,
}

/// Checks the header, then parses and validates the whole binary (nested
/// modules of a component included) and reads its imports. CPU-bound and
/// linear in the size; call it off the async threads.
pub fn check(bytes: &[u8]) -> Result<Checked, NotWasm> {
    let kind = check_header(bytes)?;
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| not_wasm(e.to_string()))?;
    let (imports, http) = imports(bytes).map_err(|e| not_wasm(e.to_string()))?;
    let workload = if http {
        Workload::Http
    } else {
        Workload::Command
    };
    Ok(Checked {
        kind,
        imports,
        workload,
    })
}

/// The imports of the outermost module or component (see
/// [`Checked::imports`]), and whether it exports [`HTTP_HANDLER`]. A
/// second pass after validation: it cannot fail on bytes the validator
/// accepted, but says why if it does.
fn imports(bytes: &[u8]) -> Result<(Vec<String>, bool), wasmparser::BinaryReaderError> {
    let mut out = std::collections::BTreeSet::new();
    let mut http = false;
    // How deep in nested modules and components the parser is: `parse_all`
    // flattens them, each ending with its own `End`.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ImportSection(section) if depth == 0 => {
                for import in section.into_imports() {
                    let import = import?;
                    if import.module == WASI_P1 && P1_SOCKET_FUNCTIONS.contains(&import.name) {
                        out.insert(SOCKETS.to_string());
                    }
                    out.insert(import.module.to_string());
                }
            }
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    out.insert(import?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    http |= export?.name.name.starts_with(HTTP_HANDLER);
                }
            }
            _ => {}
        }
    }
    Ok((out.into_iter().collect(), http))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid core module: the header alone.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";
    /// A core module exporting a function `_start` that returns at once.
    const START_MODULE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
        0x03, 0x02, 0x01, 0x00, // one function of type 0
        0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // body: end
    ];
    /// The smallest valid component: the header alone.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";
    /// Valid with the custom-page-sizes proposal, which wasmtime leaves off:
    /// the master stores it, a node fails its pod with `InvalidModule`.
    const CUSTOM_PAGE_SIZE_MODULE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        0x05, 0x04, 0x01, 0x08, 0x00, 0x00, // memory: min 0, page size 2^0 bytes
    ];

    #[test]
    fn accepts_modules_and_components() {
        let kind = |bytes| check(bytes).map(|c| c.kind);
        assert_eq!(kind(EMPTY_MODULE), Ok(WasmKind::Module));
        assert_eq!(kind(START_MODULE), Ok(WasmKind::Module));
        assert_eq!(kind(EMPTY_COMPONENT), Ok(WasmKind::Component));
        assert_eq!(kind(CUSTOM_PAGE_SIZE_MODULE), Ok(WasmKind::Module));
        assert_eq!(check(START_MODULE).map(|c| c.imports), Ok(vec![]));
    }

    /// A section: its id, its size (LEB128), its contents.
    fn section(id: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![id];
        let mut n = contents.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(contents);
        out
    }

    /// A name as the binary format writes it: its length, its bytes.
    fn name(s: &str) -> Vec<u8> {
        let mut out = vec![s.len() as u8];
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// A core module importing functions of type `() -> ()`, (module, name) each.
    fn module_importing(imports: &[(&str, &str)]) -> Vec<u8> {
        let mut out = EMPTY_MODULE.to_vec();
        out.extend(section(0x01, &[0x01, 0x60, 0x00, 0x00]));
        let mut entries = vec![imports.len() as u8];
        for (module, field) in imports {
            entries.extend(name(module));
            entries.extend(name(field));
            entries.extend([0x00, 0x00]); // a function of type 0
        }
        out.extend(section(0x02, &entries));
        out
    }

    /// A component importing instances (of the empty instance type) by
    /// these names, and holding `nested` (section id, bytes) inside.
    fn component_importing(names: &[&str], nested: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = EMPTY_COMPONENT.to_vec();
        for (id, bytes) in nested {
            out.extend(section(*id, bytes));
        }
        out.extend(section(0x07, &[0x01, 0x42, 0x00])); // type 0: instance {}
        let mut entries = vec![names.len() as u8];
        for n in names {
            entries.push(0x00);
            entries.extend(name(n));
            entries.extend([0x05, 0x00]); // an instance of type 0
        }
        out.extend(section(0x0a, &entries));
        out
    }

    #[test]
    fn reads_a_core_modules_import_modules_and_p1_sockets() {
        let p1 = "wasi_snapshot_preview1";
        // (imports as (module, function), what the master reads)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: [Case; 4] = [
            (&[(p1, "fd_write"), (p1, "proc_exit")], &[p1]),
            (
                &[(p1, "fd_write"), ("env", "f"), (p1, "sock_accept")],
                &["env", "wasi:sockets", p1],
            ),
            (
                &[(p1, "sock_send"), (p1, "sock_recv"), (p1, "sock_shutdown")],
                &["wasi:sockets", p1],
            ),
            // Only p1's own socket functions mean sockets.
            (&[("env", "sock_accept")], &["env"]),
        ];
        for (imports, want) in cases {
            let checked = check(&module_importing(imports)).expect("valid");
            assert_eq!(checked.kind, WasmKind::Module);
            assert_eq!(checked.imports, want, "{imports:?}");
        }
    }

    #[test]
    fn reads_a_components_own_imports_not_its_nested_ones() {
        let module = module_importing(&[("wasi_snapshot_preview1", "fd_write")]);
        let inner = component_importing(&["wasi:http/types@0.2.3"], &[]);
        let outer = component_importing(
            &["wasi:cli/stdout@0.2.3", "wasi:cli/environment@0.2.3"],
            &[(0x01, module), (0x04, inner)],
        );
        let checked = check(&outer).expect("valid");
        assert_eq!(checked.kind, WasmKind::Component);
        assert_eq!(
            checked.imports,
            ["wasi:cli/environment@0.2.3", "wasi:cli/stdout@0.2.3"]
        );
    }

    #[test]
    fn accepts_the_sample_workloads() {
        let mut paths: Vec<_> = flotilla_workloads::NAMES
            .into_iter()
            .map(flotilla_workloads::path)
            .collect();
        paths.push(flotilla_workloads::hello_p1());
        for path in paths {
            let bytes = std::fs::read(&path).expect("guest");
            let checked = check(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let p1 = path.to_string_lossy().contains("wasip1");
            let want = if p1 {
                WasmKind::Module
            } else {
                WasmKind::Component
            };
            assert_eq!(checked.kind, want, "{}", path.display());
            let imports = &checked.imports;
            if p1 {
                assert_eq!(imports, &[WASI_P1], "{}", path.display());
            } else {
                // A Rust std command: its own WASI imports, versioned, none
                // of the p1 adapter's that it holds inside.
                assert!(
                    imports
                        .iter()
                        .any(|i| i.starts_with("wasi:cli/environment@0.2.")),
                    "{}: {imports:?}",
                    path.display()
                );
                assert!(
                    imports
                        .iter()
                        .all(|i| i.starts_with("wasi:") && i.contains("@0.2.")),
                    "{}: {imports:?}",
                    path.display()
                );
            }
            let mut sorted = imports.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(&sorted, imports, "{}", path.display());
        }
    }

    #[test]
    fn refuses_what_is_not_wasm_and_says_why() {
        let mut bad_body = START_MODULE.to_vec();
        let last = bad_body.len() - 1;
        bad_body[last] = 0xff; // the function body no longer ends
        let mut truncated = START_MODULE.to_vec();
        truncated.truncate(START_MODULE.len() - 3);
        // (bytes, words the reason must contain)
        let cases: [(&[u8], &str); 9] = [
            (b"", "does not start with the \\0asm magic"),
            (
                b"#!/bin/sh\necho hi\n",
                "does not start with the \\0asm magic",
            ),
            (b"\x7fELF\x02\x01\x01", "native code (ELF)"),
            (b"  (module)", "WebAssembly text"),
            (b"\0asm", "cut short"),
            (b"\0asm\x02\0\0\0", "version 2 is not 1"),
            (b"\0asm\x01\0\x07\0", "unknown layer 7"),
            (&bad_body, "offset"),
            (&truncated, "offset"),
        ];
        for (bytes, want) in cases {
            match check(bytes) {
                Err(e) => assert!(e.reason.contains(want), "{bytes:?}: {e}"),
                Ok(c) => panic!("{bytes:?} accepted as {:?}", c.kind),
            }
        }
        let mut garbage = EMPTY_MODULE.to_vec();
        garbage.extend_from_slice(b"this is not a section");
        assert!(check(&garbage).is_err());
    }

    #[test]
    fn never_panics_on_damaged_bytes() {
        // Every truncation and every single-byte flip of a valid module.
        for n in 0..START_MODULE.len() {
            let _ = check(&START_MODULE[..n]);
        }
        for i in 0..START_MODULE.len() {
            for bit in 0..8 {
                let mut b = START_MODULE.to_vec();
                b[i] ^= 1 << bit;
                let _ = check(&b);
            }
        }
    }
}
