//! The peer protocol's bytes: the hello and its reply, frames, and the flatbuffer payloads
//! (schema `net/schema/peer.fbs`). Drawn byte by byte in docs/format.md ("Peer protocol"); the
//! constants below mirror that drawing.
//!
//! Every decoder takes untrusted bytes and never panics: flatbuffers are run through the
//! verifier first, then every field is checked against ferrite_raft's invariants.

use ferrite_raft::{
    ConfState, Entry, EntryKind, Message, MessageKind, SnapshotChunk, SnapshotMeta, NO_NODE,
};
use flatbuffers::{FlatBufferBuilder, VerifierOptions, WIPOffset};

use super::fb;
use super::{ClusterInfo, MemberInfo, PeerError};

/// First bytes of every hello and hello reply.
pub const HELLO_MAGIC: [u8; 4] = *b"FRPT";
/// The protocol version this build speaks (hello `version`).
pub const PROTOCOL_VERSION: u16 = 1;

// Hello: magic | version u16 | kind u8 | reserved u8 | cluster_id u64 | from u64 | to u64 | crc32c u32
const HELLO_MAGIC_OFFSET: usize = 0;
const HELLO_VERSION_OFFSET: usize = HELLO_MAGIC_OFFSET + 4;
const HELLO_KIND_OFFSET: usize = HELLO_VERSION_OFFSET + 2;
const HELLO_RESERVED_OFFSET: usize = HELLO_KIND_OFFSET + 1;
const HELLO_CLUSTER_OFFSET: usize = HELLO_RESERVED_OFFSET + 1;
const HELLO_FROM_OFFSET: usize = HELLO_CLUSTER_OFFSET + 8;
const HELLO_TO_OFFSET: usize = HELLO_FROM_OFFSET + 8;
const HELLO_CRC_OFFSET: usize = HELLO_TO_OFFSET + 8;
/// Size of a hello (all fields little-endian).
pub const HELLO_BYTES: usize = HELLO_CRC_OFFSET + 4;
const _: () = assert!(HELLO_BYTES == 36);

// Reply: magic | version u16 | status u8 | reserved u8 | cluster_id u64 | member_id u64 | crc32c u32
const REPLY_STATUS_OFFSET: usize = HELLO_VERSION_OFFSET + 2;
const REPLY_CLUSTER_OFFSET: usize = REPLY_STATUS_OFFSET + 2;
const REPLY_MEMBER_OFFSET: usize = REPLY_CLUSTER_OFFSET + 8;
const REPLY_CRC_OFFSET: usize = REPLY_MEMBER_OFFSET + 8;
/// Size of a hello reply.
pub const HELLO_REPLY_BYTES: usize = REPLY_CRC_OFFSET + 4;
const _: () = assert!(HELLO_REPLY_BYTES == 28);

/// Frame header: payload length u32 | crc32c of the payload u32, then the payload.
pub const FRAME_HEADER_BYTES: usize = 8;

/// What a connection is for (hello `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloKind {
    /// A stream of Raft message frames from `from` to `to`.
    Raft = 1,
    /// One cluster-info request; the acceptor answers with one frame and closes.
    ClusterInfo = 2,
}

/// The first bytes a dialer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the dialer speaks.
    pub version: u16,
    /// What the connection is for.
    pub kind: HelloKind,
    /// The dialer's cluster id (0 in a cluster-info request).
    pub cluster_id: u64,
    /// The dialer's member id (0 in a cluster-info request).
    pub from: u64,
    /// The member the dialer means to reach (0 in a cluster-info request).
    pub to: u64,
}

/// The acceptor's answer to a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloStatus {
    /// Accepted: frames (or the cluster-info answer) follow.
    Ok = 0,
    /// The hello's cluster id is not the acceptor's.
    ClusterMismatch = 1,
    /// The hello's receiver is not the acceptor (or its sender id is invalid).
    WrongReceiver = 2,
    /// The acceptor does not speak the hello's protocol version.
    BadVersion = 3,
    /// Reserved: a hello kind the acceptor does not serve.
    BadKind = 4,
}

impl HelloStatus {
    fn from_u8(b: u8) -> Option<HelloStatus> {
        Some(match b {
            0 => HelloStatus::Ok,
            1 => HelloStatus::ClusterMismatch,
            2 => HelloStatus::WrongReceiver,
            3 => HelloStatus::BadVersion,
            4 => HelloStatus::BadKind,
            _ => return None,
        })
    }
}

/// The acceptor's reply: its status verdict, and its own cluster and member id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloReply {
    /// Protocol version the acceptor speaks.
    pub version: u16,
    /// The verdict.
    pub status: HelloStatus,
    /// The acceptor's cluster id (0: not yet known).
    pub cluster_id: u64,
    /// The acceptor's member id.
    pub member_id: u64,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn bad(what: impl Into<String>) -> PeerError {
    PeerError::Decode(what.into())
}

/// Encodes a hello.
pub fn encode_hello(h: &Hello) -> [u8; HELLO_BYTES] {
    let mut b = [0u8; HELLO_BYTES];
    b[HELLO_MAGIC_OFFSET..HELLO_VERSION_OFFSET].copy_from_slice(&HELLO_MAGIC);
    b[HELLO_VERSION_OFFSET..HELLO_KIND_OFFSET].copy_from_slice(&h.version.to_le_bytes());
    b[HELLO_KIND_OFFSET] = h.kind as u8;
    b[HELLO_CLUSTER_OFFSET..HELLO_FROM_OFFSET].copy_from_slice(&h.cluster_id.to_le_bytes());
    b[HELLO_FROM_OFFSET..HELLO_TO_OFFSET].copy_from_slice(&h.from.to_le_bytes());
    b[HELLO_TO_OFFSET..HELLO_CRC_OFFSET].copy_from_slice(&h.to.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HELLO_CRC_OFFSET]);
    b[HELLO_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a hello. A version this build does not speak still decodes (the acceptor answers
/// `BadVersion`); a wrong magic, checksum or kind is an error.
pub fn decode_hello(b: &[u8; HELLO_BYTES]) -> Result<Hello, PeerError> {
    if b[..4] != HELLO_MAGIC {
        return Err(bad("not a ferrite peer hello (bad magic)"));
    }
    if crc32c::crc32c(&b[..HELLO_CRC_OFFSET]) != u32_at(b, HELLO_CRC_OFFSET) {
        return Err(bad("hello checksum mismatch"));
    }
    let kind = match b[HELLO_KIND_OFFSET] {
        1 => HelloKind::Raft,
        2 => HelloKind::ClusterInfo,
        k => return Err(bad(format!("unknown hello kind {k}"))),
    };
    Ok(Hello {
        version: u16_at(b, HELLO_VERSION_OFFSET),
        kind,
        cluster_id: u64_at(b, HELLO_CLUSTER_OFFSET),
        from: u64_at(b, HELLO_FROM_OFFSET),
        to: u64_at(b, HELLO_TO_OFFSET),
    })
}

/// Encodes a hello reply.
pub fn encode_hello_reply(r: &HelloReply) -> [u8; HELLO_REPLY_BYTES] {
    let mut b = [0u8; HELLO_REPLY_BYTES];
    b[..4].copy_from_slice(&HELLO_MAGIC);
    b[HELLO_VERSION_OFFSET..REPLY_STATUS_OFFSET].copy_from_slice(&r.version.to_le_bytes());
    b[REPLY_STATUS_OFFSET] = r.status as u8;
    b[REPLY_CLUSTER_OFFSET..REPLY_MEMBER_OFFSET].copy_from_slice(&r.cluster_id.to_le_bytes());
    b[REPLY_MEMBER_OFFSET..REPLY_CRC_OFFSET].copy_from_slice(&r.member_id.to_le_bytes());
    let crc = crc32c::crc32c(&b[..REPLY_CRC_OFFSET]);
    b[REPLY_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a hello reply.
pub fn decode_hello_reply(b: &[u8; HELLO_REPLY_BYTES]) -> Result<HelloReply, PeerError> {
    if b[..4] != HELLO_MAGIC {
        return Err(bad("not a ferrite peer hello reply (bad magic)"));
    }
    if crc32c::crc32c(&b[..REPLY_CRC_OFFSET]) != u32_at(b, REPLY_CRC_OFFSET) {
        return Err(bad("hello reply checksum mismatch"));
    }
    let status = HelloStatus::from_u8(b[REPLY_STATUS_OFFSET])
        .ok_or_else(|| bad(format!("unknown hello status {}", b[REPLY_STATUS_OFFSET])))?;
    Ok(HelloReply {
        version: u16_at(b, HELLO_VERSION_OFFSET),
        status,
        cluster_id: u64_at(b, REPLY_CLUSTER_OFFSET),
        member_id: u64_at(b, REPLY_MEMBER_OFFSET),
    })
}

/// Appends one frame (header + `payload`) to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(
        payload.len() <= u32::MAX as usize,
        "frame payload over 4 GiB"
    );
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses a frame header: the payload length (checked against `frame_bytes_max`) and the
/// expected crc32c of the payload.
pub fn parse_frame_header(
    h: &[u8; FRAME_HEADER_BYTES],
    frame_bytes_max: u32,
) -> Result<(u32, u32), PeerError> {
    let len = u32_at(h, 0);
    if len > frame_bytes_max {
        return Err(PeerError::FrameTooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    Ok((len, u32_at(h, 4)))
}

/// Checks a payload against the crc32c from its header.
pub fn check_frame_crc(payload: &[u8], crc: u32) -> Result<(), PeerError> {
    if crc32c::crc32c(payload) != crc {
        return Err(bad("frame checksum mismatch"));
    }
    Ok(())
}

/// Decodes one whole frame held in `buf` (header + payload, nothing after). For tests and
/// fuzzing; the connection reader uses the pieces.
pub fn decode_frame(buf: &[u8], frame_bytes_max: u32) -> Result<Message, PeerError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(bad("torn frame header"));
    }
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h.copy_from_slice(&buf[..FRAME_HEADER_BYTES]);
    let (len, crc) = parse_frame_header(&h, frame_bytes_max)?;
    let payload = &buf[FRAME_HEADER_BYTES..];
    if payload.len() != len as usize {
        return Err(bad("frame length does not match its payload"));
    }
    check_frame_crc(payload, crc)?;
    decode_message(payload)
}

/// Appends `m` as one frame to `out`. Reuses `fbb` (reset first).
pub fn put_message_frame(fbb: &mut FlatBufferBuilder<'static>, out: &mut Vec<u8>, m: &Message) {
    encode_message_into(fbb, m);
    put_frame(out, fbb.finished_data());
}

/// Encodes `m` as a flatbuffer (no frame header).
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(message_capacity(m));
    encode_message_into(&mut fbb, m);
    fbb.finished_data().to_vec()
}

fn message_capacity(m: &Message) -> usize {
    let entries: usize = m.entries.iter().map(|e| e.data.len() + 48).sum();
    let snap = m.snapshot.as_ref().map_or(0, |s| {
        s.data.len() + 96 + 8 * s.meta.conf_state.voters.len()
    });
    128 + m.context.len() + entries + snap
}

fn encode_message_into(fbb: &mut FlatBufferBuilder<'static>, m: &Message) {
    fbb.reset();
    let context = (!m.context.is_empty()).then(|| fbb.create_vector(&m.context));
    let entries = (!m.entries.is_empty()).then(|| {
        let offs: Vec<WIPOffset<fb::Entry>> = m
            .entries
            .iter()
            .map(|e| {
                let data = (!e.data.is_empty()).then(|| fbb.create_vector(&e.data));
                fb::Entry::create(
                    fbb,
                    &fb::EntryArgs {
                        index: e.index,
                        term: e.term,
                        kind: match e.kind {
                            EntryKind::Normal => fb::EntryKind::Normal,
                            EntryKind::ConfChange => fb::EntryKind::ConfChange,
                        },
                        data,
                    },
                )
            })
            .collect();
        fbb.create_vector(&offs)
    });
    let snapshot = m.snapshot.as_ref().map(|s| {
        let voters = fbb.create_vector(&s.meta.conf_state.voters);
        let learners = fbb.create_vector(&s.meta.conf_state.learners);
        let cs = fb::ConfState::create(
            fbb,
            &fb::ConfStateArgs {
                voters: Some(voters),
                learners: Some(learners),
            },
        );
        let meta = fb::SnapshotMeta::create(
            fbb,
            &fb::SnapshotMetaArgs {
                index: s.meta.index,
                term: s.meta.term,
                conf_state: Some(cs),
            },
        );
        let data = fbb.create_vector(&s.data);
        fb::SnapshotChunk::create(
            fbb,
            &fb::SnapshotChunkArgs {
                meta: Some(meta),
                offset: s.offset,
                total_len: s.total_len,
                data: Some(data),
            },
        )
    });
    let msg = fb::Message::create(
        fbb,
        &fb::MessageArgs {
            kind: fb::MessageKind(m.kind as u8),
            from: m.from,
            to: m.to,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            commit: m.commit,
            reject: m.reject,
            reject_hint: m.reject_hint,
            seq: m.seq,
            context,
            entries,
            snapshot,
        },
    );
    fbb.finish(msg, None);
}

/// Verifier limits scaled to the buffer, so a small hostile buffer cannot make the verifier do
/// much more work than its size.
fn verifier_options(len: usize) -> VerifierOptions {
    VerifierOptions {
        max_depth: 16,
        max_tables: len / 4 + 16,
        max_apparent_size: len.saturating_mul(2) + 4096,
        ignore_missing_null_terminator: false,
    }
}

fn conf_state_ok(v: &[u64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1]) && !v.contains(&NO_NODE)
}

/// Decodes a flatbuffer `Message` payload. Never panics; rejects what the verifier rejects,
/// unknown message and entry kinds, `from`/`to` of 0, unsorted or overlapping voter/learner
/// lists, and snapshot chunks that reach past their total length.
pub fn decode_message(payload: &[u8]) -> Result<Message, PeerError> {
    let opts = verifier_options(payload.len());
    let m = flatbuffers::root_with_opts::<fb::Message>(&opts, payload)
        .map_err(|e| bad(format!("invalid flatbuffer: {e}")))?;
    let kind = MessageKind::from_u8(m.kind().0)
        .ok_or_else(|| bad(format!("unknown message kind {}", m.kind().0)))?;
    if m.from() == NO_NODE || m.to() == NO_NODE {
        return Err(bad("message from or to node 0"));
    }
    let mut entries = Vec::new();
    if let Some(es) = m.entries() {
        entries.reserve(es.len());
        for e in es.iter() {
            let kind = match e.kind() {
                fb::EntryKind::Normal => EntryKind::Normal,
                fb::EntryKind::ConfChange => EntryKind::ConfChange,
                k => return Err(bad(format!("unknown entry kind {}", k.0))),
            };
            entries.push(Entry {
                index: e.index(),
                term: e.term(),
                kind,
                data: e.data().map(|d| d.bytes().to_vec()).unwrap_or_default(),
            });
        }
    }
    let snapshot = match m.snapshot() {
        None => None,
        Some(s) => {
            let meta = s.meta().ok_or_else(|| bad("snapshot chunk without meta"))?;
            let cs = meta.conf_state();
            let voters: Vec<u64> = cs
                .and_then(|c| c.voters())
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let learners: Vec<u64> = cs
                .and_then(|c| c.learners())
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            if !conf_state_ok(&voters) || !conf_state_ok(&learners) {
                return Err(bad("snapshot conf state ids not strictly ascending"));
            }
            if voters.iter().any(|v| learners.binary_search(v).is_ok()) {
                return Err(bad("snapshot conf state: a node is both voter and learner"));
            }
            let data = s.data().map(|d| d.bytes().to_vec()).unwrap_or_default();
            if s.offset()
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > s.total_len())
            {
                return Err(bad("snapshot chunk beyond its total length"));
            }
            Some(SnapshotChunk {
                meta: SnapshotMeta {
                    index: meta.index(),
                    term: meta.term(),
                    conf_state: ConfState { voters, learners },
                },
                offset: s.offset(),
                total_len: s.total_len(),
                data,
            })
        }
    };
    Ok(Message {
        kind,
        from: m.from(),
        to: m.to(),
        term: m.term(),
        log_term: m.log_term(),
        index: m.index(),
        commit: m.commit(),
        reject: m.reject(),
        reject_hint: m.reject_hint(),
        seq: m.seq(),
        context: m.context().map(|c| c.bytes().to_vec()).unwrap_or_default(),
        entries,
        snapshot,
    })
}

/// Encodes a cluster-info answer as a flatbuffer payload.
pub fn encode_cluster_info(info: &ClusterInfo) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let members: Vec<_> = info
        .members
        .iter()
        .map(|m| {
            let name = fbb.create_string(&m.name);
            let peer_urls = create_strings(&mut fbb, &m.peer_urls);
            let client_urls = create_strings(&mut fbb, &m.client_urls);
            fb::Member::create(
                &mut fbb,
                &fb::MemberArgs {
                    id: m.id,
                    name: Some(name),
                    peer_urls: Some(peer_urls),
                    client_urls: Some(client_urls),
                    is_learner: m.is_learner,
                },
            )
        })
        .collect();
    let members = fbb.create_vector(&members);
    let root = fb::ClusterInfo::create(
        &mut fbb,
        &fb::ClusterInfoArgs {
            cluster_id: info.cluster_id,
            members: Some(members),
        },
    );
    fbb.finish(root, None);
    fbb.finished_data().to_vec()
}

fn create_strings<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    v: &[String],
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<&'b str>>> {
    let offs: Vec<_> = v.iter().map(|s| fbb.create_string(s)).collect();
    fbb.create_vector(&offs)
}

/// Decodes a cluster-info payload. Never panics.
pub fn decode_cluster_info(payload: &[u8]) -> Result<ClusterInfo, PeerError> {
    let opts = verifier_options(payload.len());
    let c = flatbuffers::root_with_opts::<fb::ClusterInfo>(&opts, payload)
        .map_err(|e| bad(format!("invalid cluster info flatbuffer: {e}")))?;
    let strings = |v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>>| {
        v.map(|v| v.iter().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let members = c
        .members()
        .map(|ms| {
            ms.iter()
                .map(|m| MemberInfo {
                    id: m.id(),
                    name: m.name().unwrap_or_default().to_string(),
                    peer_urls: strings(m.peer_urls()),
                    client_urls: strings(m.client_urls()),
                    is_learner: m.is_learner(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ClusterInfo {
        cluster_id: c.cluster_id(),
        members,
    })
}
