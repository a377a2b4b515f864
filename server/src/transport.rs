//! The seam between the Raft core and its peers. A single member needs no peers ([`NoPeers`]);
//! a cluster plugs the peer network (`ferrite_net::peer`) in here. Messages are sent in the
//! order given; the transport may drop, duplicate or reorder them (Raft tolerates all three).
//! Inbound messages reach the Raft core on its own channel (see `RaftCore::run`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ferrite_auth::rustls::ClientConfig;
use ferrite_net::peer::{ClusterInfo, MemberInfo, PeerConfig, PeerNet};
use ferrite_raft::Message;
use futures_channel::mpsc;

use crate::state::Shared;
use crate::tls::PeerTls;

pub trait Transport {
    /// Hands messages to the network. Must not block the Raft core.
    fn send(&mut self, msgs: Vec<Message>);
    /// A member joined (or changed its peer URLs): connect to it at these URLs.
    fn set_peer(&mut self, _id: u64, _peer_urls: Vec<String>) {}
    /// A member left: drop its connection.
    fn remove_peer(&mut self, _id: u64) {}
    /// Peers that messages could not reach since the last call (for `report_unreachable`).
    fn take_unreachable(&mut self) -> Vec<u64> {
        Vec::new()
    }
    /// Since when the connection to peer `id` has been up without a break (etcd's
    /// `ActiveSince`); `None` if it is down or unknown.
    fn active_since(&self, _id: u64) -> Option<std::time::Instant> {
        None
    }
}

/// The transport of a single-member cluster: there is nobody to talk to. A message to another
/// member means the membership and the transport disagree: it is logged and dropped.
#[derive(Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            tracing::warn!(to = m.to, kind = ?m.kind, "no transport to peer; message dropped");
        }
    }
}

/// The peer network (`ferrite_net::peer::PeerNet`) as the Raft core's transport.
pub struct PeerTransport {
    net: PeerNet,
}

impl Transport for PeerTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.net.send(msgs);
        }
    }
    fn set_peer(&mut self, id: u64, peer_urls: Vec<String>) {
        self.net.set_peer(id, peer_urls);
    }
    fn remove_peer(&mut self, id: u64) {
        self.net.remove_peer(id);
    }
    fn take_unreachable(&mut self) -> Vec<u64> {
        self.net.take_unreachable()
    }
    fn active_since(&self, id: u64) -> Option<std::time::Instant> {
        self.net.active_since(id)
    }
}

/// The cluster-info answer for joining members, from the applied membership.
pub fn cluster_info(shared: &Shared) -> ClusterInfo {
    let m = shared.members();
    ClusterInfo {
        cluster_id: shared.cluster_id,
        members: m
            .members
            .values()
            .map(|mm| MemberInfo {
                id: mm.id,
                name: mm.name.clone(),
                peer_urls: mm.peer_urls.clone(),
                client_urls: mm.client_urls.clone(),
                is_learner: mm.is_learner,
            })
            .collect(),
    }
}

/// Asks the peers at `peer_urls` for the cluster's membership (a joining member's first step).
/// Runs a short-lived glommio executor on its own thread (called before the server starts).
/// `tls` is the peer client configuration (needed for `https://` peer URLs).
pub fn fetch_cluster_info(
    peer_urls: &[String],
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<ClusterInfo, String> {
    let urls = peer_urls.to_vec();
    let h = glommio::LocalExecutorBuilder::default()
        .name("fetch-cluster-info")
        .spawn(move || async move {
            ferrite_net::peer::fetch_cluster_info(&urls, tls, timeout)
                .await
                .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("starting an executor: {e}"))?;
    h.join()
        .map_err(|e| format!("fetching cluster info: {e}"))?
}

/// Resolves `scheme://host:port` listen URLs to socket addresses.
fn listen_addrs(listen: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for u in listen {
        let hp = u
            .split_once("://")
            .map_or(u.as_str(), |(_, rest)| rest)
            .trim_end_matches('/');
        let addrs = hp
            .to_socket_addrs()
            .map_err(|e| format!("peer listen URL {u}: {e}"))?;
        // One address per URL (etcd listens on the URL's host as given).
        if let Some(a) = addrs.into_iter().next() {
            out.push(a);
        }
    }
    Ok(out)
}

/// The Raft core's inbound peer messages.
pub type PeerInbound = Option<mpsc::UnboundedReceiver<Message>>;

/// Starts the peer network on the Raft core's executor (core 0), listening on `listen`. A lone
/// member whose peer port cannot be bound runs without peers (logged), so a single-node server
/// still starts where the default peer port is taken; a member of a larger cluster fails.
/// `tls` (from `--peer-cert-file` ... or `--peer-auto-tls`) makes the listener speak TLS and
/// lets `https://` peer URLs be dialed; without it both are plain TCP (an `https://` peer URL
/// then cannot be dialed, which the flag checks rule out at start).
pub fn start_peer_net(
    shared: &Arc<Shared>,
    listen: &[String],
    tls: Option<PeerTls>,
) -> Result<(Box<dyn Transport>, PeerInbound), String> {
    let alone = shared.members().members.len() <= 1;
    let addrs = match listen_addrs(listen) {
        Ok(a) => a,
        Err(e) if alone => {
            tracing::warn!(error = %e, "no peer listener; serving as a lone member");
            return Ok((Box::new(NoPeers), None));
        }
        Err(e) => return Err(e),
    };
    let mut cfg = PeerConfig::new(shared.member_id, shared.cluster_id, addrs);
    // As etcd: the listener speaks TLS for https:// listen URLs only (the certificate is
    // ignored on an http:// one); dialing picks TLS by the other member's URL scheme.
    let https = listen.iter().filter(|u| u.starts_with("https://")).count();
    if https != 0 && https != listen.len() {
        return Err(format!(
            "--listen-peer-urls {} mixes http:// and https://; ferrite serves one scheme on \
             its peer listeners",
            listen.join(",")
        ));
    }
    if let Some(t) = tls {
        if https > 0 {
            cfg.server_tls = Some(t.server);
        } else {
            tracing::warn!(
                "listen-peer-urls" = %listen.join(","),
                "peer TLS is configured but the peer listen URLs are http://; serving plain TCP"
            );
        }
        cfg.client_tls = Some(t.client);
    }
    let has_tls = cfg.server_tls.is_some();
    let info_shared = shared.clone();
    let info: Rc<dyn Fn() -> ClusterInfo> = Rc::new(move || cluster_info(&info_shared));
    match PeerNet::start(cfg, info) {
        Ok((net, rx)) => {
            for a in net.local_addrs() {
                tracing::info!(address = %a, tls = has_tls, "listening for peers");
            }
            Ok((Box::new(PeerTransport { net }), Some(rx)))
        }
        Err(e) if alone => {
            tracing::warn!(error = %e, "cannot listen for peers; serving as a lone member");
            Ok((Box::new(NoPeers), None))
        }
        Err(e) => Err(format!("listening for peers on {}: {e}", listen.join(","))),
    }
}

/// A member that has heard from no leader for a while asks its peers for the membership; if it
/// is no longer listed, it was removed while it could not learn of it (the leader stops
/// replicating to a removed member), and it exits as etcd does. Runs on the Raft core's
/// executor; `peer_urls` are the other members' URLs.
pub fn spawn_removal_check(
    member_id: u64,
    peer_urls: Vec<String>,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) {
    glommio::spawn_local(async move {
        if let Ok(info) = ferrite_net::peer::fetch_cluster_info(&peer_urls, tls, timeout).await {
            if !info.members.is_empty() && info.members.iter().all(|m| m.id != member_id) {
                tracing::error!(
                    "local-member-id" = format!("{member_id:x}"),
                    "the member has been permanently removed from the cluster"
                );
                eprintln!("ferrite: the member has been permanently removed from the cluster");
                std::process::exit(1);
            }
        }
    })
    .detach();
}
