//! The seam between the Raft core and its peers. One node needs no peers; a cluster plugs a
//! network transport in here (the next issue). Messages are sent in the order given; the
//! transport may drop, duplicate or reorder them (Raft tolerates all three).

use ferrite_raft::Message;

pub trait Transport {
    /// Hands messages to the network. Must not block the Raft core.
    fn send(&mut self, msgs: Vec<Message>);
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
