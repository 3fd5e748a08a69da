//! Renewing this master's own certificates (serving and raft client) before
//! they expire, and putting the new ones in use without a restart.

use crate::{pki, raft};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Renews this master's serving and raft client certificates when due, and
/// puts the new ones in use: new connections get them, open ones go on
/// (TLS checks a certificate only at the handshake).
pub(crate) async fn renew_certificates(
    pki: Arc<pki::Pki>,
    node_id: u64,
    endpoint: quinn::Endpoint,
    network: raft::Network,
    shutdown: CancellationToken,
) {
    use flotilla_api::time::Time;
    // Checked at least hourly: a machine that slept or had its clock set
    // forward finds its certificates due without waiting out a long timer.
    const LONGEST_WAIT: Duration = Duration::from_secs(3600);
    const RETRY: Duration = Duration::from_secs(60);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Time::now();
        let result = (|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let renewed = pki.renew_due(node_id, now)?;
            if renewed.server {
                let tls = pki.server_tls()?;
                let quic = flotilla_api::net::quic_server_config(tls)?;
                endpoint.set_server_config(Some(quic));
                tracing::info!("serving with the renewed certificate");
            }
            if renewed.client {
                let client = pki.master_client(node_id)?;
                let tls = pki.master_client_tls(&client)?;
                network.set_client_tls(tls)?;
                tracing::info!("talking to the other masters with the renewed certificate");
            }
            Ok(())
        })();
        pki.warn_if_expiring(now);
        wait = match result {
            Ok(()) => {
                let until = pki.next_renewal(node_id).since(Time::now()).max(1000);
                Duration::from_millis(until.unsigned_abs()).min(LONGEST_WAIT)
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RETRY, "cannot renew this master's certificates");
                RETRY
            }
        };
    }
}
