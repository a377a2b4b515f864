//! The on-disk format of WAL segments, mirrored byte by byte from `docs/format.md`
//! ("WAL segments"). Every offset below is computed from the previous one.
//!
//! ```text
//! segment file  NNNNNNNNNNNNNNNN.wal  (sequence number, 16 lower-case hex digits)
//! +----------------------+--------+--------+-----+--------+--------------------------+
//! | segment header (32B) | record | record | ... | record | zeros to the file's end  |
//! +----------------------+--------+--------+-----+--------+--------------------------+
//!
//! segment header                        record header (12 B), then payload_len bytes
//!  0..8   magic "FRTWAL\r\n"             0..4   crc32c(bytes 4..12 ++ payload)
//!  8..12  format version (u32 = 1)       4..8   payload_len (u32)
//! 12..16  reserved, zero                 8      record type (u8: 1 entry, 2 hard state,
//! 16..24  segment sequence (u64)                 3 snapshot)
//! 24..28  batch_bytes_max (u32)          9..12  reserved, zero
//! 28..32  crc32c(bytes 0..28)
//! ```
//! All integers little-endian.

use crate::WalRecord;

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FRTWAL\r\n";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;

pub const SEGMENT_MAGIC_OFFSET: usize = 0;
pub const SEGMENT_VERSION_OFFSET: usize = SEGMENT_MAGIC_OFFSET + 8;
pub const SEGMENT_RESERVED_OFFSET: usize = SEGMENT_VERSION_OFFSET + 4;
pub const SEGMENT_SEQ_OFFSET: usize = SEGMENT_RESERVED_OFFSET + 4;
pub const SEGMENT_BATCH_BYTES_MAX_OFFSET: usize = SEGMENT_SEQ_OFFSET + 8;
pub const SEGMENT_CRC_OFFSET: usize = SEGMENT_BATCH_BYTES_MAX_OFFSET + 4;
/// Bytes of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = SEGMENT_CRC_OFFSET + 4;

pub const RECORD_CRC_OFFSET: usize = 0;
pub const RECORD_LEN_OFFSET: usize = RECORD_CRC_OFFSET + 4;
pub const RECORD_TYPE_OFFSET: usize = RECORD_LEN_OFFSET + 4;
pub const RECORD_RESERVED_OFFSET: usize = RECORD_TYPE_OFFSET + 1;
/// Bytes of a record header; the payload follows.
pub const RECORD_HEADER_BYTES: usize = RECORD_RESERVED_OFFSET + 3;

pub const RECORD_TYPE_ENTRY: u8 = 1;
pub const RECORD_TYPE_HARD_STATE: u8 = 2;
pub const RECORD_TYPE_SNAPSHOT: u8 = 3;

/// Entry payload: index u64, term u64, then the entry's data (the rest of the payload).
pub const ENTRY_PAYLOAD_FIXED_BYTES: usize = 16;
/// Hard state payload: term u64, vote u64, commit u64.
pub const HARD_STATE_PAYLOAD_BYTES: usize = 24;
/// Snapshot payload: index u64, term u64.
pub const SNAPSHOT_PAYLOAD_BYTES: usize = 16;

/// Largest payload the decoder accepts (a sanity bound; the writer's real bound is the
/// segment's `batch_bytes_max`).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest `batch_bytes_max` a segment header may carry.
pub const BATCH_BYTES_MAX_LIMIT: u32 = 64 * 1024 * 1024;
/// Smallest `batch_bytes_max` a segment header may carry.
pub const BATCH_BYTES_MAX_MIN: u32 = 256;

/// Every new segment starts with the current hard state and snapshot marker (the
/// "preamble"), so any suffix of segments carries the latest state.
pub const PREAMBLE_BYTES_MAX: usize =
    2 * RECORD_HEADER_BYTES + HARD_STATE_PAYLOAD_BYTES + SNAPSHOT_PAYLOAD_BYTES;

const _: () = assert!(SEGMENT_HEADER_BYTES == 32);
const _: () = assert!(RECORD_HEADER_BYTES == 12);
const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BATCH_BYTES_MAX_LIMIT as usize <= RECORD_PAYLOAD_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX_MIN as usize > PREAMBLE_BYTES_MAX);

/// The file name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The temporary name a segment is prepared under before it is renamed into place.
pub fn segment_tmp_name(seq: u64) -> String {
    format!("{seq:016x}.wal.tmp")
}

/// Parses `NNNNNNNNNNNNNNNN.wal` into its sequence number.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    /// Bytes written between two syncs into this segment, at most (plus the preamble).
    /// Recovery uses it to bound the region a torn write can have damaged.
    pub batch_bytes_max: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        assert!((BATCH_BYTES_MAX_MIN..=BATCH_BYTES_MAX_LIMIT).contains(&self.batch_bytes_max));
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[SEGMENT_MAGIC_OFFSET..SEGMENT_VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
        b[SEGMENT_VERSION_OFFSET..SEGMENT_RESERVED_OFFSET]
            .copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[SEGMENT_SEQ_OFFSET..SEGMENT_BATCH_BYTES_MAX_OFFSET]
            .copy_from_slice(&self.seq.to_le_bytes());
        b[SEGMENT_BATCH_BYTES_MAX_OFFSET..SEGMENT_CRC_OFFSET]
            .copy_from_slice(&self.batch_bytes_max.to_le_bytes());
        let crc = crc32c::crc32c(&b[..SEGMENT_CRC_OFFSET]);
        b[SEGMENT_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, &'static str> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err("segment shorter than its header");
        }
        if b[SEGMENT_MAGIC_OFFSET..SEGMENT_VERSION_OFFSET] != SEGMENT_MAGIC {
            return Err("bad segment magic");
        }
        let crc = u32_at(b, SEGMENT_CRC_OFFSET);
        if crc != crc32c::crc32c(&b[..SEGMENT_CRC_OFFSET]) {
            return Err("segment header checksum mismatch");
        }
        if u32_at(b, SEGMENT_VERSION_OFFSET) != FORMAT_VERSION {
            return Err("unsupported segment format version");
        }
        if u32_at(b, SEGMENT_RESERVED_OFFSET) != 0 {
            return Err("segment header reserved bytes are not zero");
        }
        let batch_bytes_max = u32_at(b, SEGMENT_BATCH_BYTES_MAX_OFFSET);
        if !(BATCH_BYTES_MAX_MIN..=BATCH_BYTES_MAX_LIMIT).contains(&batch_bytes_max) {
            return Err("segment header batch_bytes_max out of range");
        }
        Ok(SegmentHeader {
            seq: u64_at(b, SEGMENT_SEQ_OFFSET),
            batch_bytes_max,
        })
    }
}

/// Why bytes did not decode as a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a record header, or than the header's payload length.
    Truncated,
    /// The header is all zeros: the end of the written part of a segment.
    Zero,
    /// The payload length exceeds `RECORD_PAYLOAD_BYTES_MAX`.
    TooLong,
    ChecksumMismatch,
    UnknownType(u8),
    ReservedNotZero,
    /// The payload length does not fit the record type.
    BadPayloadLength,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "record truncated"),
            DecodeError::Zero => write!(f, "zero record header"),
            DecodeError::TooLong => write!(f, "record payload length exceeds the limit"),
            DecodeError::ChecksumMismatch => write!(f, "record checksum mismatch"),
            DecodeError::UnknownType(t) => write!(f, "unknown record type {t}"),
            DecodeError::ReservedNotZero => write!(f, "record reserved bytes are not zero"),
            DecodeError::BadPayloadLength => write!(f, "payload length does not fit record type"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Bytes `record` occupies once encoded (header included).
pub fn encoded_len(record: &WalRecord) -> usize {
    RECORD_HEADER_BYTES
        + match record {
            WalRecord::Entry { data, .. } => ENTRY_PAYLOAD_FIXED_BYTES + data.len(),
            WalRecord::HardState { .. } => HARD_STATE_PAYLOAD_BYTES,
            WalRecord::Snapshot { .. } => SNAPSHOT_PAYLOAD_BYTES,
        }
}

/// Appends the encoding of `record` to `out`.
pub fn encode_record(record: &WalRecord, out: &mut Vec<u8>) {
    let start = out.len();
    let payload_len = encoded_len(record) - RECORD_HEADER_BYTES;
    assert!(
        payload_len <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload too long"
    );
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    let kind = match record {
        WalRecord::Entry { .. } => RECORD_TYPE_ENTRY,
        WalRecord::HardState { .. } => RECORD_TYPE_HARD_STATE,
        WalRecord::Snapshot { .. } => RECORD_TYPE_SNAPSHOT,
    };
    out.push(kind);
    out.extend_from_slice(&[0u8; 3]);
    match record {
        WalRecord::Entry { index, term, data } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(data);
        }
        WalRecord::HardState { term, vote, commit } => {
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(&vote.to_le_bytes());
            out.extend_from_slice(&commit.to_le_bytes());
        }
        WalRecord::Snapshot { index, term } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
        }
    }
    assert_eq!(out.len() - start, RECORD_HEADER_BYTES + payload_len);
    let crc = crc32c::crc32c(&out[start + RECORD_LEN_OFFSET..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `buf`; returns it and the bytes it occupies.
pub fn decode_record(buf: &[u8]) -> Result<(WalRecord, usize), DecodeError> {
    if buf.len() < RECORD_HEADER_BYTES {
        if buf.iter().all(|&b| b == 0) {
            return Err(DecodeError::Zero);
        }
        return Err(DecodeError::Truncated);
    }
    let header = &buf[..RECORD_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return Err(DecodeError::Zero);
    }
    let payload_len = u32_at(header, RECORD_LEN_OFFSET) as usize;
    if payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::TooLong);
    }
    let total = RECORD_HEADER_BYTES + payload_len;
    if buf.len() < total {
        return Err(DecodeError::Truncated);
    }
    let crc = u32_at(header, RECORD_CRC_OFFSET);
    if crc != crc32c::crc32c(&buf[RECORD_LEN_OFFSET..total]) {
        return Err(DecodeError::ChecksumMismatch);
    }
    if header[RECORD_RESERVED_OFFSET..RECORD_HEADER_BYTES] != [0, 0, 0] {
        return Err(DecodeError::ReservedNotZero);
    }
    let p = &buf[RECORD_HEADER_BYTES..total];
    let record = match header[RECORD_TYPE_OFFSET] {
        RECORD_TYPE_ENTRY => {
            if p.len() < ENTRY_PAYLOAD_FIXED_BYTES {
                return Err(DecodeError::BadPayloadLength);
            }
            WalRecord::Entry {
                index: u64_at(p, 0),
                term: u64_at(p, 8),
                data: p[ENTRY_PAYLOAD_FIXED_BYTES..].to_vec(),
            }
        }
        RECORD_TYPE_HARD_STATE => {
            if p.len() != HARD_STATE_PAYLOAD_BYTES {
                return Err(DecodeError::BadPayloadLength);
            }
            WalRecord::HardState {
                term: u64_at(p, 0),
                vote: u64_at(p, 8),
                commit: u64_at(p, 16),
            }
        }
        RECORD_TYPE_SNAPSHOT => {
            if p.len() != SNAPSHOT_PAYLOAD_BYTES {
                return Err(DecodeError::BadPayloadLength);
            }
            WalRecord::Snapshot {
                index: u64_at(p, 0),
                term: u64_at(p, 8),
            }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok((record, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example in docs/format.md, byte by byte.
    #[test]
    fn documented_example_layout() {
        let mut b = Vec::new();
        encode_record(
            &WalRecord::Entry {
                index: 1,
                term: 2,
                data: b"hi".to_vec(),
            },
            &mut b,
        );
        let mut want = vec![0x12, 0, 0, 0, 1, 0, 0, 0];
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(b"hi");
        assert_eq!(b.len(), 30);
        assert_eq!(&b[4..], &want[..]);
        assert_eq!(
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            crc32c::crc32c(&want)
        );
        let h = SegmentHeader {
            seq: 0x1234,
            batch_bytes_max: 4096,
        }
        .encode();
        assert_eq!(&h[..8], b"FRTWAL\r\n");
        assert_eq!(
            SegmentHeader::decode(&h),
            Ok(SegmentHeader {
                seq: 0x1234,
                batch_bytes_max: 4096
            })
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(0x1234)),
            Some(0x1234)
        );
        assert_eq!(segment_file_name(0x1234), "0000000000001234.wal");
        assert_eq!(parse_segment_file_name("0000000000001234.wal.tmp"), None);
        assert_eq!(decode_record(&[0u8; 12]), Err(DecodeError::Zero));
    }
}
