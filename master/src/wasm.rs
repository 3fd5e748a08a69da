//! Checks that an uploaded module is WebAssembly — a core module or a
//! component — before the master stores it. Bytes that are not would be
//! fetched by nodes and fail there, pod after pod; refused at upload, the
//! user learns at once and nothing is stored.
//!
//! The check is wasmparser's validator with every proposal enabled: it asks
//! "is this WebAssembly?", not "can a node run it?". Whether a node's engine
//! supports what a module uses is the node's judgement: a pod whose module
//! does not compile there fails with reason `InvalidModule`.

use wasmparser::{Validator, WasmFeatures};

/// The kind of a WebAssembly binary, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A core module (WASI p1 programs).
    Module,
    /// A component (WASI p2 programs).
    Component,
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

/// Checks the header, then parses and validates the whole binary (nested
/// modules of a component included). CPU-bound and linear in the size;
/// call it off the async threads.
pub fn check(bytes: &[u8]) -> Result<WasmKind, NotWasm> {
    let kind = check_header(bytes)?;
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| not_wasm(e.to_string()))?;
    Ok(kind)
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
        assert_eq!(check(EMPTY_MODULE), Ok(WasmKind::Module));
        assert_eq!(check(START_MODULE), Ok(WasmKind::Module));
        assert_eq!(check(EMPTY_COMPONENT), Ok(WasmKind::Component));
        assert_eq!(check(CUSTOM_PAGE_SIZE_MODULE), Ok(WasmKind::Module));
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
            let kind = check(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let p1 = path.to_string_lossy().contains("wasip1");
            let want = if p1 {
                WasmKind::Module
            } else {
                WasmKind::Component
            };
            assert_eq!(kind, want, "{}", path.display());
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
                Ok(k) => panic!("{bytes:?} accepted as {k:?}"),
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
