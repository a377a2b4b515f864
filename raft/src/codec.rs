//! Compact binary encoding of `Entry`, `Message`, `ConfChange`, `HardState` and
//! `SnapshotMeta` (drawn in docs/format.md, "Raft entries and messages").
//!
//! Integers are unsigned LEB128 varints (1..=10 bytes; an overlong or overflowing varint is an
//! error). Byte strings are a varint length followed by the bytes. Decoders never panic and
//! never allocate more than the input's length: every count is checked against the bytes left.

use std::fmt;

use crate::types::*;

/// First byte of an encoded `Message`.
pub const MESSAGE_FORMAT_VERSION: u8 = 1;
/// First byte of an encoded `ConfChange`.
pub const CONF_CHANGE_FORMAT_VERSION: u8 = 1;
/// Message flag bits.
pub const MESSAGE_FLAG_REJECT: u8 = 1 << 0;
pub const MESSAGE_FLAG_SNAPSHOT: u8 = 1 << 1;
const MESSAGE_FLAGS_KNOWN: u8 = MESSAGE_FLAG_REJECT | MESSAGE_FLAG_SNAPSHOT;
/// Entry kind bytes.
pub const ENTRY_KIND_NORMAL: u8 = 0;
pub const ENTRY_KIND_CONF_CHANGE: u8 = 1;
/// Smallest possible encoded entry (index, term, kind, data length: one byte each), used to
/// bound a decoded entry count by the input length.
pub const ENTRY_ENCODED_BYTES_MIN: usize = 4;
/// Longest varint.
pub const VARINT_BYTES_MAX: usize = 10;

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset in the input where decoding failed.
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft decode error at byte {}: {}",
            self.offset, self.what
        )
    }
}

impl std::error::Error for DecodeError {}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, what: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError {
            offset: self.pos,
            what,
        })
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err("truncated"),
        }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..VARINT_BYTES_MAX {
            let b = self.u8()?;
            let bits = (b & 0x7f) as u64;
            if i == VARINT_BYTES_MAX - 1 && b > 1 {
                return self.err("varint overflows u64");
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return self.err("overlong varint");
                }
                return Ok(v);
            }
        }
        self.err("varint too long")
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return self.err("byte string longer than input");
        }
        let s = self.buf[self.pos..self.pos + n as usize].to_vec();
        self.pos += n as usize;
        Ok(s)
    }

    fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > (self.remaining() / min_item_bytes.max(1)) as u64 {
            return self.err("count larger than input allows");
        }
        Ok(n as usize)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return self.err("trailing bytes");
        }
        Ok(())
    }
}

fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    put_varint(out, e.index);
    put_varint(out, e.term);
    out.push(match e.kind {
        EntryKind::Normal => ENTRY_KIND_NORMAL,
        EntryKind::ConfChange => ENTRY_KIND_CONF_CHANGE,
    });
    put_bytes(out, &e.data);
}

fn read_entry(r: &mut Reader) -> Result<Entry, DecodeError> {
    let index = r.varint()?;
    let term = r.varint()?;
    let kind = match r.u8()? {
        ENTRY_KIND_NORMAL => EntryKind::Normal,
        ENTRY_KIND_CONF_CHANGE => EntryKind::ConfChange,
        _ => return r.err("unknown entry kind"),
    };
    let data = r.bytes()?;
    Ok(Entry {
        index,
        term,
        kind,
        data,
    })
}

/// Encodes one entry (the form the server's WAL may store as a record payload).
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.data.len() + 16);
    put_entry(&mut out, e);
    out
}

pub fn decode_entry(buf: &[u8]) -> Result<Entry, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let e = read_entry(&mut r)?;
    r.finish()?;
    Ok(e)
}

fn put_ids(out: &mut Vec<u8>, ids: &[NodeId]) {
    put_varint(out, ids.len() as u64);
    for &id in ids {
        put_varint(out, id);
    }
}

fn read_ids(r: &mut Reader) -> Result<Vec<NodeId>, DecodeError> {
    let n = r.count(1)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.varint()?);
    }
    // Sorted, unique, non-zero: what ConfState promises.
    if v.windows(2).any(|w| w[0] >= w[1]) || v.contains(&NO_NODE) {
        return r.err("node ids not sorted, unique and non-zero");
    }
    Ok(v)
}

fn put_snapshot_meta(out: &mut Vec<u8>, m: &SnapshotMeta) {
    put_varint(out, m.index);
    put_varint(out, m.term);
    put_ids(out, &m.conf_state.voters);
    put_ids(out, &m.conf_state.learners);
}

fn read_snapshot_meta(r: &mut Reader) -> Result<SnapshotMeta, DecodeError> {
    let index = r.varint()?;
    let term = r.varint()?;
    let voters = read_ids(r)?;
    let learners = read_ids(r)?;
    if learners.iter().any(|l| voters.binary_search(l).is_ok()) {
        return r.err("node is both voter and learner");
    }
    Ok(SnapshotMeta {
        index,
        term,
        conf_state: ConfState { voters, learners },
    })
}

pub fn encode_snapshot_meta(m: &SnapshotMeta) -> Vec<u8> {
    let mut out = Vec::new();
    put_snapshot_meta(&mut out, m);
    out
}

pub fn decode_snapshot_meta(buf: &[u8]) -> Result<SnapshotMeta, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let m = read_snapshot_meta(&mut r)?;
    r.finish()?;
    Ok(m)
}

pub fn encode_hard_state(h: &HardState) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, h.term);
    put_varint(&mut out, h.vote);
    put_varint(&mut out, h.commit);
    out
}

pub fn decode_hard_state(buf: &[u8]) -> Result<HardState, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let h = HardState {
        term: r.varint()?,
        vote: r.varint()?,
        commit: r.varint()?,
    };
    r.finish()?;
    Ok(h)
}

pub fn encode_conf_change(cc: &ConfChange) -> Vec<u8> {
    let mut out = Vec::with_capacity(cc.context.len() + 12);
    out.push(CONF_CHANGE_FORMAT_VERSION);
    out.push(match cc.kind {
        ConfChangeKind::AddVoter => 0,
        ConfChangeKind::AddLearner => 1,
        ConfChangeKind::Remove => 2,
    });
    put_varint(&mut out, cc.node_id);
    put_bytes(&mut out, &cc.context);
    out
}

pub fn decode_conf_change(buf: &[u8]) -> Result<ConfChange, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != CONF_CHANGE_FORMAT_VERSION {
        return r.err("unknown conf change version");
    }
    let kind = match r.u8()? {
        0 => ConfChangeKind::AddVoter,
        1 => ConfChangeKind::AddLearner,
        2 => ConfChangeKind::Remove,
        _ => return r.err("unknown conf change kind"),
    };
    let node_id = r.varint()?;
    if node_id == NO_NODE {
        return r.err("conf change for node 0");
    }
    let context = r.bytes()?;
    r.finish()?;
    Ok(ConfChange {
        kind,
        node_id,
        context,
    })
}

/// Encodes a message for the peer transport.
pub fn encode_message(m: &Message) -> Vec<u8> {
    let data: usize = m.entries.iter().map(|e| e.data.len() + 16).sum::<usize>()
        + m.snapshot.as_ref().map_or(0, |s| s.data.len() + 64);
    let mut out = Vec::with_capacity(64 + data + m.context.len());
    out.push(MESSAGE_FORMAT_VERSION);
    out.push(m.kind as u8);
    put_varint(&mut out, m.from);
    put_varint(&mut out, m.to);
    put_varint(&mut out, m.term);
    put_varint(&mut out, m.log_term);
    put_varint(&mut out, m.index);
    put_varint(&mut out, m.commit);
    let mut flags = 0;
    if m.reject {
        flags |= MESSAGE_FLAG_REJECT;
    }
    if m.snapshot.is_some() {
        flags |= MESSAGE_FLAG_SNAPSHOT;
    }
    out.push(flags);
    put_varint(&mut out, m.reject_hint);
    put_varint(&mut out, m.seq);
    put_bytes(&mut out, &m.context);
    put_varint(&mut out, m.entries.len() as u64);
    for e in &m.entries {
        put_entry(&mut out, e);
    }
    if let Some(s) = &m.snapshot {
        put_snapshot_meta(&mut out, &s.meta);
        put_varint(&mut out, s.offset);
        put_varint(&mut out, s.total_len);
        put_bytes(&mut out, &s.data);
    }
    out
}

/// Decodes a message. Never panics; rejects trailing bytes, unknown kinds and flags, and
/// snapshot chunks whose offset + length exceed their total length.
pub fn decode_message(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != MESSAGE_FORMAT_VERSION {
        return r.err("unknown message format version");
    }
    let Some(kind) = MessageKind::from_u8(r.u8()?) else {
        return r.err("unknown message kind");
    };
    let from = r.varint()?;
    let to = r.varint()?;
    let term = r.varint()?;
    let log_term = r.varint()?;
    let index = r.varint()?;
    let commit = r.varint()?;
    let flags = r.u8()?;
    if flags & !MESSAGE_FLAGS_KNOWN != 0 {
        return r.err("unknown message flags");
    }
    let reject_hint = r.varint()?;
    let seq = r.varint()?;
    let context = r.bytes()?;
    let n = r.count(ENTRY_ENCODED_BYTES_MIN)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(read_entry(&mut r)?);
    }
    let snapshot = if flags & MESSAGE_FLAG_SNAPSHOT != 0 {
        let meta = read_snapshot_meta(&mut r)?;
        let offset = r.varint()?;
        let total_len = r.varint()?;
        let data = r.bytes()?;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > total_len)
        {
            return r.err("snapshot chunk beyond its total length");
        }
        Some(SnapshotChunk {
            meta,
            offset,
            total_len,
            data,
        })
    } else {
        None
    };
    r.finish()?;
    Ok(Message {
        kind,
        from,
        to,
        term,
        log_term,
        index,
        commit,
        reject: flags & MESSAGE_FLAG_REJECT != 0,
        reject_hint,
        seq,
        context,
        entries,
        snapshot,
    })
}
