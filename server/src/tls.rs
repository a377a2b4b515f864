//! TLS on the client port and the peer port, from etcd's flags through
//! `ferrite_auth::tls`: an `https://` URL in `--listen-client-urls` gets a [`TlsAcceptor`]
//! plugged into ferrite-net's `StreamWrapper` seam, so gRPC, the JSON gateway, /metrics,
//! /health and /version are all served over the same TLS. A verified client certificate's
//! common name rides along in every request's extensions ([`PeerCommonName`]) for
//! `--client-cert-auth`.
//!
//! A refused handshake (expired, revoked, wrongly signed, missing certificate) is logged as
//! `rejected connection` with the remote address and reason; only that connection closes.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use ferrite_auth::futures_rustls::TlsAcceptor;
use ferrite_auth::rustls::{ClientConfig, ServerConfig};
use ferrite_auth::tls::{self, AllowedPeer, ClientTlsOptions, ServerTlsOptions};
use ferrite_net::{BoxStream, LocalBoxFuture, StreamWrapper};
use glommio::net::TcpStream;

use crate::authz::PeerCommonName;
use crate::config::Config;

fn opt(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// The hosts of `urls` (for an --auto-tls certificate's names).
fn hosts(urls: &[String]) -> Vec<String> {
    urls.iter()
        .filter_map(|u| u.split_once("://").map(|(_, rest)| rest))
        .map(|hp| {
            let hp = hp.trim_end_matches('/');
            match hp.rsplit_once(':') {
                Some((h, _)) => h.trim_matches(|c| c == '[' || c == ']').to_string(),
                None => hp.to_string(),
            }
        })
        .collect()
}

/// The client port's rustls configuration, or `None` when no https URL is listened on. As
/// etcd, `https://` URLs in `--listen-metrics-urls` are served with the same configuration
/// (the client certificate, key, trusted CA and `--client-cert-auth`).
pub fn client_server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, String> {
    let urls: Vec<String> = config
        .listen_client_urls
        .0
        .iter()
        .chain(config.listen_metrics_urls.0.iter())
        .map(|u| u.to_string())
        .collect();
    if !urls.iter().any(|u| u.starts_with("https://")) {
        return Ok(None);
    }
    let t = &config.tls;
    let (cert, key) = if t.auto_tls && t.cert_file.is_empty() {
        let f = tls::auto_tls(
            &config.data_dir,
            "client",
            &hosts(&urls),
            tls::AUTO_TLS_VALIDITY,
        )
        .map_err(|e| format!("auto-tls: {e}"))?;
        tracing::warn!(
            "cert-file" = %f.cert_file.display(),
            "automatically generated client TLS certificate (--auto-tls)"
        );
        (f.cert_file, f.key_file)
    } else {
        (PathBuf::from(&t.cert_file), PathBuf::from(&t.key_file))
    };
    let cfg = tls::server_config(&ServerTlsOptions {
        cert_file: cert,
        key_file: key,
        trusted_ca_file: opt(&t.trusted_ca_file),
        client_cert_auth: t.client_cert_auth,
        crl_file: opt(&t.client_crl_file),
        cipher_suites: t.cipher_suites.clone(),
        allowed: Some(
            AllowedPeer::from_flags("", &t.client_cert_allowed_hostname)
                .map_err(|e| e.to_string())?,
        ),
    })
    .map_err(|e| format!("client TLS: {e}"))?;
    Ok(Some(cfg))
}

/// The peer port's server and client configurations, when peer TLS is asked for: the server
/// side accepts `https://` peer connections, the client side dials other members' `https://`
/// peer URLs (Raft streams, the joining member's cluster-info request, the removal check).
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

pub fn peer_configs(config: &Config) -> Result<Option<PeerTls>, String> {
    let t = &config.tls;
    let wanted = t.peer_auto_tls || !t.peer_cert_file.is_empty() || !t.peer_key_file.is_empty();
    if !wanted {
        return Ok(None);
    }
    let (cert, key) = if t.peer_auto_tls && t.peer_cert_file.is_empty() {
        let urls: Vec<String> = config
            .initial_advertise_peer_urls
            .0
            .iter()
            .map(|u| u.to_string())
            .collect();
        let f = tls::auto_tls(
            &config.data_dir,
            "peer",
            &hosts(&urls),
            tls::AUTO_TLS_VALIDITY,
        )
        .map_err(|e| format!("peer-auto-tls: {e}"))?;
        (f.cert_file, f.key_file)
    } else {
        (
            PathBuf::from(&t.peer_cert_file),
            PathBuf::from(&t.peer_key_file),
        )
    };
    let allowed = AllowedPeer::from_flags(&t.peer_cert_allowed_cn, &t.peer_cert_allowed_hostname)
        .map_err(|e| e.to_string())?;
    let ca = opt(&t.peer_trusted_ca_file);
    let server = tls::server_config(&ServerTlsOptions {
        cert_file: cert.clone(),
        key_file: key.clone(),
        trusted_ca_file: ca.clone(),
        client_cert_auth: t.peer_client_cert_auth,
        crl_file: opt(&t.peer_crl_file),
        cipher_suites: t.cipher_suites.clone(),
        allowed: Some(allowed.clone()),
    })
    .map_err(|e| format!("peer TLS (server): {e}"))?;
    let client = tls::client_config(&ClientTlsOptions {
        cert_file: Some(cert),
        key_file: Some(key),
        trusted_ca_file: ca,
        cipher_suites: t.cipher_suites.clone(),
        insecure_skip_verify: t.peer_auto_tls && t.peer_trusted_ca_file.is_empty(),
        allowed: Some(allowed),
    })
    .map_err(|e| format!("peer TLS (client): {e}"))?;
    Ok(Some(PeerTls { server, client }))
}

/// The TLS acceptor on one client URL.
pub struct TlsWrapper {
    pub acceptor: TlsAcceptor,
    pub url: String,
}

impl TlsWrapper {
    pub fn new(config: Arc<ServerConfig>, url: String) -> TlsWrapper {
        TlsWrapper {
            acceptor: TlsAcceptor::from(config),
            url,
        }
    }
}

impl StreamWrapper for TlsWrapper {
    fn wrap(&self, stream: TcpStream) -> LocalBoxFuture<io::Result<BoxStream>> {
        let fut = self.wrap_with_info(stream);
        Box::pin(async move { fut.await.map(|(s, _)| s) })
    }

    fn wrap_with_info(
        &self,
        stream: TcpStream,
    ) -> LocalBoxFuture<io::Result<(BoxStream, http::Extensions)>> {
        let acceptor = self.acceptor.clone();
        let url = self.url.clone();
        Box::pin(async move {
            let remote = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            match acceptor.accept(stream).await {
                Ok(tls) => {
                    let mut ext = http::Extensions::new();
                    if let Some(cn) = tls::peer_common_name(tls.get_ref().1) {
                        ext.insert(PeerCommonName(cn));
                    }
                    Ok((Box::new(tls) as BoxStream, ext))
                }
                Err(e) => {
                    tracing::warn!(
                        "remote-addr" = %remote,
                        "server-url" = %url,
                        error = %e,
                        "rejected connection"
                    );
                    Err(e)
                }
            }
        })
    }
}
