//! Leases: the granted set, their attached keys and their expiry deadlines.
//!
//! Grant and revoke change durable state and are applied from Raft entries on the Raft core.
//! Deadlines are leader-local (as etcd's): renewals (KeepAlive) only move a deadline and are
//! not replicated; expiry is detected by the leader, which then proposes a LeaseRevoke through
//! Raft, so deleting the attached keys is an ordinary, atomic, logged write.
//! The set of leases and their TTLs is persisted in the MVCC metadata (`LEASES_META_KEY`);
//! the key attachments are rebuilt from the keys' `lease` field on restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::errors::EtcdError;

/// etcd's `MaxLeaseTTL`, seconds.
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;
/// Metadata key holding every granted lease and its TTL.
pub const LEASES_META_KEY: &[u8] = b"ferrite/leases";

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL, seconds (after raising to the minimum).
    pub ttl_seconds: i64,
    pub deadline: Instant,
    pub keys: BTreeSet<Vec<u8>>,
    /// A revoke for it has been proposed (do not propose again until the deadline passes anew).
    pub revoking_since: Option<Instant>,
}

#[derive(Debug)]
pub struct Lessor {
    leases: BTreeMap<i64, Lease>,
    ttl_seconds_min: i64,
}

impl Lessor {
    pub fn new(ttl_seconds_min: i64) -> Lessor {
        assert!(ttl_seconds_min >= 1);
        Lessor {
            leases: BTreeMap::new(),
            ttl_seconds_min,
        }
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Applies a grant. Deterministic except for the deadline (leader-local).
    pub fn grant(&mut self, id: i64, ttl_seconds: i64, now: Instant) -> Result<i64, EtcdError> {
        if ttl_seconds > LEASE_TTL_SECONDS_MAX {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExists);
        }
        let ttl = ttl_seconds.max(self.ttl_seconds_min);
        self.leases.insert(
            id,
            Lease {
                id,
                ttl_seconds: ttl,
                deadline: now + Duration::from_secs(ttl as u64),
                keys: BTreeSet::new(),
                revoking_since: None,
            },
        );
        Ok(ttl)
    }

    /// Restores a lease from metadata on startup, with a fresh deadline (etcd's promote).
    pub fn restore(&mut self, id: i64, ttl_seconds: i64, now: Instant) {
        self.leases.insert(
            id,
            Lease {
                id,
                ttl_seconds,
                deadline: now + Duration::from_secs(ttl_seconds.max(0) as u64),
                keys: BTreeSet::new(),
                revoking_since: None,
            },
        );
    }

    /// Removes the lease; returns the keys that must be deleted with it.
    pub fn revoke(&mut self, id: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        let l = self.leases.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        Ok(l.keys.into_iter().collect())
    }

    pub fn keys_of(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
    }

    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.to_vec());
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// KeepAlive: moves the deadline; returns the TTL.
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<i64, EtcdError> {
        let l = self.leases.get_mut(&id).ok_or(EtcdError::LeaseNotFound)?;
        l.deadline = now + Duration::from_secs(l.ttl_seconds as u64);
        l.revoking_since = None;
        Ok(l.ttl_seconds)
    }

    /// (remaining seconds, granted TTL, keys)
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<(i64, i64, Vec<Vec<u8>>)> {
        let l = self.leases.get(&id)?;
        let remaining = l.deadline.saturating_duration_since(now).as_secs() as i64;
        Some((remaining, l.ttl_seconds, l.keys.iter().cloned().collect()))
    }

    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Leases past their deadline with no revoke in flight (or whose revoke was proposed more
    /// than `retry` ago); marks them as being revoked.
    pub fn take_expired(&mut self, now: Instant, retry: Duration, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for l in self.leases.values_mut() {
            if out.len() >= max {
                break;
            }
            if l.deadline <= now
                && l.revoking_since
                    .is_none_or(|t| now.duration_since(t) > retry)
            {
                l.revoking_since = Some(now);
                out.push(l.id);
            }
        }
        out
    }

    /// Encodes (id, ttl) pairs for the metadata key: 16 bytes per lease, little-endian.
    pub fn encode_meta(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.leases.len() * 16);
        for l in self.leases.values() {
            out.extend_from_slice(&l.id.to_le_bytes());
            out.extend_from_slice(&l.ttl_seconds.to_le_bytes());
        }
        out
    }

    pub fn decode_meta(bytes: &[u8]) -> Result<Vec<(i64, i64)>, String> {
        if !bytes.len().is_multiple_of(16) {
            return Err(format!(
                "lease metadata of {} bytes is not a multiple of 16",
                bytes.len()
            ));
        }
        Ok(bytes
            .chunks_exact(16)
            .map(|c| {
                let id = i64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
                let ttl = i64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
                (id, ttl)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_revoke_expire() {
        let now = Instant::now();
        let mut l = Lessor::new(2);
        assert_eq!(l.grant(5, 1, now).unwrap(), 2);
        assert_eq!(l.grant(5, 10, now), Err(EtcdError::LeaseExists));
        assert_eq!(
            l.grant(6, LEASE_TTL_SECONDS_MAX + 1, now),
            Err(EtcdError::LeaseTtlTooLarge)
        );
        l.attach(5, b"a");
        assert!(l.take_expired(now, Duration::from_secs(1), 10).is_empty());
        let later = now + Duration::from_secs(3);
        assert_eq!(l.take_expired(later, Duration::from_secs(1), 10), vec![5]);
        assert!(l.take_expired(later, Duration::from_secs(1), 10).is_empty());
        let meta = l.encode_meta();
        assert_eq!(Lessor::decode_meta(&meta).unwrap(), vec![(5, 2)]);
        assert!(Lessor::decode_meta(&meta[..5]).is_err());
        assert_eq!(l.revoke(5).unwrap(), vec![b"a".to_vec()]);
        assert_eq!(l.revoke(5), Err(EtcdError::LeaseNotFound));
    }
}
