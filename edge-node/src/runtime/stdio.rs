//! Guest stdout/stderr that hand every write straight to a [`LogSink`].
//!
//! wasmtime-wasi's default adapters buffer through a background task; writing
//! synchronously instead keeps ordering exact, costs no task per stream and
//! means output is already at the sink when a guest is killed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::{LogSink, LogStream};

/// How many bytes a guest may hand over in one write. Bounds the size of a
/// single sink call; the guest simply writes again for the rest.
const WRITE_BUDGET: usize = 64 * 1024;

/// One of a guest's output streams, forwarding to the pod's sink.
#[derive(Clone)]
pub(super) struct SinkOutput {
    sink: Arc<dyn LogSink>,
    stream: LogStream,
}

impl SinkOutput {
    pub(super) fn new(sink: Arc<dyn LogSink>, stream: LogStream) -> Self {
        SinkOutput { sink, stream }
    }
}

impl IsTerminal for SinkOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SinkOutput {
    // The sink never pushes back, so the stream is always writable.
    async fn ready(&mut self) {}
}

impl OutputStream for SinkOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !bytes.is_empty() {
            self.sink.write(self.stream, &bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl AsyncWrite for SinkOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(WRITE_BUDGET);
        if n > 0 {
            self.sink.write(self.stream, &buf[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
