//! Cluster membership: the members (id, name, peer and client URLs, learner flag) and the ids
//! removed from the cluster, as etcd's `membership.RaftCluster` keeps them.
//!
//! Where it lives: replicated state, stored with the state machine in the MVCC store's metadata
//! under [`MEMBERSHIP_META_KEY`] (so it is part of every B+tree snapshot image a new member
//! installs) and mirrored in Raft's `ConfState` (voters and learners). It changes only by
//! applying committed entries: ConfChange entries (add, promote, remove; the member's
//! attributes ride in the change's context) and `MemberAttr` requests in a `RaftBatch`
//! (a member publishing its name and client URLs at start; `MemberUpdate` of peer URLs).
//!
//! The local identity (this member's id and its cluster's id) is not replicated: it is kept in
//! the member directory's `identity` file (docs/format.md), written once at first start.
//!
//! Ids are etcd's: a member's id is the first 8 bytes (big endian) of sha1(sorted peer URLs ++
//! cluster token [++ unix seconds for a member added at runtime]); the cluster id is the first
//! 8 bytes of sha1 of the sorted member ids (8 bytes big endian each).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferrite_net::pb::etcdserverpb::Member;
use prost::Message as _;
use sha1::{Digest, Sha1};

/// Metadata key of the encoded [`MembershipPb`].
pub const MEMBERSHIP_META_KEY: &[u8] = b"ferrite/membership";
/// Name of the identity file in the member directory.
pub const IDENTITY_FILE: &str = "identity";

/// etcd's member id: sha1 of the sorted peer URLs, the cluster token and (for a member added
/// at runtime) the unix time in seconds; first 8 bytes big endian.
pub fn member_id(peer_urls: &[String], cluster_token: &str, unix_secs: Option<u64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(cluster_token.as_bytes());
    if let Some(t) = unix_secs {
        h.update(t.to_string().as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// etcd's cluster id: sha1 of the sorted member ids (8 bytes BE each), first 8 bytes BE.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// One member, as stored (field numbers are on-disk format).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberPb {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

/// The whole membership, as stored under [`MEMBERSHIP_META_KEY`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct MembershipPb {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<MemberPb>,
    #[prost(uint64, repeated, tag = "3")]
    pub removed: Vec<u64>,
}

/// The context of a ConfChange entry: who waits for it, and the member it concerns.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfChangeCtx {
    /// Waiter id on the proposing member (0: nobody waits).
    #[prost(uint64, tag = "1")]
    pub waiter: u64,
    #[prost(uint64, tag = "2")]
    pub proposer: u64,
    #[prost(message, optional, tag = "3")]
    pub member: Option<MemberPb>,
}

/// The membership in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub cluster_id: u64,
    pub members: BTreeMap<u64, MemberPb>,
    pub removed: BTreeSet<u64>,
}

impl Membership {
    /// The initial cluster of a new cluster: `name -> peer URLs` (etcd's
    /// `NewClusterFromURLsMap`). Names are known, client URLs come when each member publishes.
    pub fn from_initial(initial: &BTreeMap<String, Vec<String>>, token: &str) -> Membership {
        let mut members = BTreeMap::new();
        for (name, urls) in initial {
            let mut urls = urls.clone();
            urls.sort();
            let id = member_id(&urls, token, None);
            members.insert(
                id,
                MemberPb {
                    id,
                    name: name.clone(),
                    peer_urls: urls,
                    client_urls: Vec::new(),
                    is_learner: false,
                },
            );
        }
        let ids: Vec<u64> = members.keys().copied().collect();
        Membership {
            cluster_id: cluster_id(&ids),
            members,
            removed: BTreeSet::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        MembershipPb {
            cluster_id: self.cluster_id,
            members: self.members.values().cloned().collect(),
            removed: self.removed.iter().copied().collect(),
        }
        .encode_to_vec()
    }

    pub fn decode(b: &[u8]) -> Result<Membership, String> {
        let pb = MembershipPb::decode(b).map_err(|e| format!("membership metadata: {e}"))?;
        Ok(Membership {
            cluster_id: pb.cluster_id,
            members: pb.members.into_iter().map(|m| (m.id, m)).collect(),
            removed: pb.removed.into_iter().collect(),
        })
    }

    pub fn voters(&self) -> Vec<u64> {
        self.members
            .values()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    }

    /// The member whose peer URLs equal `urls` (order-insensitive).
    pub fn find_by_peer_urls(&self, urls: &[String]) -> Option<&MemberPb> {
        let mut want = urls.to_vec();
        want.sort();
        self.members.values().find(|m| {
            let mut have = m.peer_urls.clone();
            have.sort();
            have == want
        })
    }

    /// Does any member already use one of these peer URLs (other than `except`)?
    pub fn peer_url_taken(&self, urls: &[String], except: u64) -> bool {
        self.members
            .values()
            .filter(|m| m.id != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// The etcd API view (sorted by id, as etcd's `Members()`).
    pub fn to_api(&self) -> Vec<Member> {
        self.members
            .values()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect()
    }
}

/// The local identity, kept in `<member dir>/identity` as one text line
/// `ferrite-identity v1 <member id hex> <cluster id hex>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
}

impl Identity {
    pub fn load(member_dir: &Path) -> Result<Option<Identity>, String> {
        let path = member_dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let bad = || format!("{} is corrupt: {text:?}", path.display());
        if parts.len() != 4 || parts[0] != "ferrite-identity" || parts[1] != "v1" {
            return Err(bad());
        }
        let member_id = u64::from_str_radix(parts[2], 16).map_err(|_| bad())?;
        let cluster_id = u64::from_str_radix(parts[3], 16).map_err(|_| bad())?;
        Ok(Some(Identity {
            member_id,
            cluster_id,
        }))
    }

    /// Writes the file durably (temp file, fsync, rename, fsync of the directory).
    pub fn store(&self, member_dir: &Path) -> Result<(), String> {
        use std::io::Write;
        let path = member_dir.join(IDENTITY_FILE);
        let tmp = member_dir.join(format!("{IDENTITY_FILE}.tmp"));
        let text = format!(
            "ferrite-identity v1 {:x} {:x}\n",
            self.member_id, self.cluster_id
        );
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(member_dir)?.sync_all()?;
            Ok(())
        };
        write().map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd() {
        // etcd 3.4 started with its defaults reports member 8e9e05c52164694d, cluster
        // cdf818194e3a8c32.
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster", None);
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }

    #[test]
    fn membership_roundtrip() {
        let mut init = BTreeMap::new();
        init.insert("a".to_string(), vec!["http://127.0.0.1:1".to_string()]);
        init.insert("b".to_string(), vec!["http://127.0.0.1:2".to_string()]);
        let m = Membership::from_initial(&init, "tok");
        assert_eq!(m.members.len(), 2);
        let back = Membership::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert!(m.peer_url_taken(&["http://127.0.0.1:2".to_string()], 0));
        assert!(Membership::decode(&[0xff, 0xff]).is_err());
    }
}
