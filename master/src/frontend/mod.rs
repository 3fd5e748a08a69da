//! Front ends: thin translators between a wire and the API core
//! ([`crate::apiserver`]). Each turns its requests into the core's verbs
//! and the core's answers (and errors) into its frames; none holds a rule
//! of its own.
//!
//! - [`quic`]: the QUIC protocol of the CLI and the nodes (postcard frames
//!   over mutual-TLS streams).

pub mod quic;
