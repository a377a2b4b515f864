//! The seam between the Raft core and its peers. A single member needs no peers ([`NoPeers`]);
//! a cluster plugs the peer network (`ferrite_net::peer`) in here. Messages are sent in the
//! order given; the transport may drop, duplicate or reorder them (Raft tolerates all three).
//! Inbound messages reach the Raft core on its own channel (see `RaftCore::run`).

use ferrite_raft::Message;

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

/// What a joining member learns from a peer: the cluster id and its members.
pub struct FetchedCluster {
    pub cluster_id: u64,
    pub members: Vec<FetchedMember>,
}

pub struct FetchedMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// Asks the peers at `peer_urls` for the cluster's membership (a joining member's first step).
pub fn fetch_cluster_info(
    _peer_urls: &[String],
    _timeout: std::time::Duration,
) -> Result<FetchedCluster, String> {
    Err("the peer transport is not available in this build".into())
}

/// Starts the peer network on the Raft core's executor (core 0). Without peer listeners (or
/// before the peer transport exists) a member runs alone.
pub fn start_peer_net(
    _shared: &std::sync::Arc<crate::state::Shared>,
    _listen: &[String],
) -> Result<
    (
        Box<dyn Transport>,
        Option<futures_channel::mpsc::UnboundedReceiver<Message>>,
    ),
    String,
> {
    Ok((Box::new(NoPeers), None))
}
