//! The synchronous WAL engine: recovery, validation, group writes, segment rolling and
//! release. Generic over [`Storage`] so tests run it on the simulated disk.

use std::collections::VecDeque;

use crate::error::WalError;
use crate::format::{self, DecodeError, SegmentHeader, PREAMBLE_BYTES_MAX, SEGMENT_HEADER_BYTES};
use crate::storage::{Storage, StorageFile};
use crate::{Entry, HardState, Recovered, WalOptions, WalRecord};

/// The compact state of the log that validation needs (no entry data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogState {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<(u64, u64)>,
    /// Raft's last index: the last entry's index or the snapshot marker's, whichever is
    /// later; 0 for an empty log. `None` only during recovery, before the first entry of a
    /// log whose older segments were released (the last index is not known yet, so the
    /// first entry seen is taken as it is).
    pub last_index: Option<u64>,
}

impl LogState {
    /// Checks `record` against the log and applies it. On error nothing changes.
    pub fn apply(&mut self, record: &WalRecord) -> Result<(), String> {
        match record {
            WalRecord::Entry { index, .. } => {
                let index = *index;
                if index == 0 {
                    return Err("entry index 0 (indexes start at 1)".into());
                }
                if let Some((s, _)) = self.snapshot {
                    if index <= s {
                        return Err(format!(
                            "entry index {index} is at or below the snapshot index {s}"
                        ));
                    }
                }
                if let Some(last) = self.last_index {
                    if index - 1 > last {
                        return Err(format!(
                            "entry index {index} leaves a gap after the last index {last}"
                        ));
                    }
                }
                self.last_index = Some(index);
            }
            WalRecord::HardState { term, vote, commit } => {
                self.hard_state = Some(HardState {
                    term: *term,
                    vote: *vote,
                    commit: *commit,
                });
            }
            WalRecord::Snapshot { index, term } => {
                if let Some((s, _)) = self.snapshot {
                    if *index < s {
                        return Err(format!(
                            "snapshot index {index} goes below the logged snapshot {s}"
                        ));
                    }
                }
                self.snapshot = Some((*index, *term));
                if let Some(last) = self.last_index {
                    self.last_index = Some(last.max(*index));
                }
            }
        }
        Ok(())
    }

    fn preamble(&self) -> Vec<WalRecord> {
        let mut out = Vec::new();
        if let Some(hs) = self.hard_state {
            out.push(WalRecord::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            });
        }
        if let Some((index, term)) = self.snapshot {
            out.push(WalRecord::Snapshot { index, term });
        }
        out
    }
}

/// The entry list recovery rebuilds, with the supersede rule applied.
#[derive(Default)]
struct EntryLog {
    entries: Vec<Entry>,
}

impl EntryLog {
    fn apply(&mut self, record: &WalRecord) {
        match record {
            WalRecord::Entry { index, term, data } => {
                if let Some(first) = self.entries.first().map(|e| e.index) {
                    if *index < first {
                        self.entries.clear();
                    } else {
                        self.entries.truncate((*index - first) as usize);
                    }
                }
                if let Some(last) = self.entries.last() {
                    assert_eq!(last.index + 1, *index, "validated entries are contiguous");
                }
                self.entries.push(Entry {
                    index: *index,
                    term: *term,
                    data: data.clone(),
                });
            }
            WalRecord::Snapshot { index, .. } => {
                let keep_from = self.entries.partition_point(|e| e.index <= *index);
                self.entries.drain(..keep_from);
            }
            WalRecord::HardState { .. } => {}
        }
    }
}

#[derive(Debug, Clone)]
struct SegmentInfo {
    seq: u64,
    name: String,
    /// Highest entry index written into the segment (`release_below` frees by it).
    max_entry_index: Option<u64>,
}

/// The synchronous WAL. Not thread-safe by itself; [`crate::GroupWal`] runs it on its own
/// I/O thread.
pub struct Wal<S: Storage> {
    storage: S,
    options: WalOptions,
    /// Live segments, oldest first; the last is the one being written.
    segments: VecDeque<SegmentInfo>,
    current: S::File,
    /// Capacity of the current segment file in bytes.
    current_capacity: u64,
    /// `batch_bytes_max` recorded in the current segment's header.
    current_batch_bytes_max: usize,
    /// Where the next record goes in the current segment. Everything before it is durable.
    write_offset: u64,
    /// The state of the durable log.
    state: LogState,
    /// Sequence number of the segment being prepared, if a preparation was begun.
    preparing: Option<u64>,
    poisoned: Option<String>,
    buf: Vec<u8>,
}

impl<S: Storage> std::fmt::Debug for Wal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("segments", &self.segment_seqs())
            .field("write_offset", &self.write_offset)
            .field("state", &self.state)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

fn first_nonzero(b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x != 0)
}

fn last_nonzero(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&x| x != 0)
}

impl<S: Storage> Wal<S> {
    /// Opens the log on `storage`, recovering its contents (see the crate doc for the
    /// rules), and returns it with what it holds.
    pub fn open(mut storage: S, options: WalOptions) -> Result<(Wal<S>, Recovered), WalError> {
        options.validate()?;
        let mut names = storage
            .list()
            .map_err(|e| WalError::io("list", storage.describe("."), &e))?;
        names.sort();
        for n in names.iter().filter(|n| n.ends_with(".wal.tmp")) {
            storage
                .remove(n)
                .map_err(|e| WalError::io("remove", storage.describe(n), &e))?;
        }
        let mut seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| format::parse_segment_file_name(n))
            .collect();
        seqs.sort_unstable();
        for w in seqs.windows(2) {
            if w[1] != w[0] + 1 {
                let missing = format::segment_file_name(w[0] + 1);
                return Err(WalError::Corrupt {
                    file: storage.describe(&missing),
                    offset: 0,
                    reason: format!("segment missing between {} and {}", w[0], w[1]),
                });
            }
        }
        if seqs.is_empty() {
            prepare_segment(&mut storage, 0, &options)?;
            seqs.push(0);
        }

        // Find the last segment holding anything past its header, reading from the end
        // (only that one and the spares after it are read here; at most two segment images
        // are in memory at a time).
        let mut last = 0;
        let mut last_image = None;
        for (k, &seq) in seqs.iter().enumerate().rev() {
            let image = read_image(&mut storage, seq)?;
            if k == 0 || first_nonzero(&image.3[SEGMENT_HEADER_BYTES..]).is_some() {
                last = k;
                last_image = Some(image);
                break;
            }
        }
        // Spare (prepared, never written) segments after the last written one go.
        for &seq in &seqs[last + 1..] {
            let name = format::segment_file_name(seq);
            storage
                .remove(&name)
                .map_err(|e| WalError::io("remove", storage.describe(&name), &e))?;
        }

        let mut state = LogState::default();
        let mut log = EntryLog::default();
        let mut segments = VecDeque::new();
        let mut write_offset = SEGMENT_HEADER_BYTES as u64;
        let mut current = None;
        for (i, &seq) in seqs[..=last].iter().enumerate() {
            let is_last = i == last;
            let (name, mut file, header, bytes) = match is_last {
                true => last_image.take().expect("read above"),
                false => read_image(&mut storage, seq)?,
            };
            let mut off = SEGMENT_HEADER_BYTES;
            let mut max_entry_index = None;
            let bad: Option<(usize, String)> = loop {
                match format::decode_record(&bytes[off..]) {
                    Ok((rec, n)) => {
                        state.apply(&rec).map_err(|reason| WalError::Corrupt {
                            file: storage.describe(&name),
                            offset: off as u64,
                            reason: format!("record violates the log's rules: {reason}"),
                        })?;
                        log.apply(&rec);
                        if let WalRecord::Entry { index, .. } = rec {
                            max_entry_index = max_entry_index.max(Some(index));
                        }
                        off += n;
                    }
                    Err(DecodeError::Zero) => match first_nonzero(&bytes[off..]) {
                        None => break None,
                        Some(_) => break Some((off, "zero record header followed by data".into())),
                    },
                    Err(e) => break Some((off, e.to_string())),
                }
            };
            if let Some((bad_at, reason)) = bad {
                // A crash can only have damaged the bytes of the last unsynced batch: at most
                // the segment's batch_bytes_max plus a preamble, starting at or before
                // `bad_at`, with never-written zeros after it.
                let window = header.batch_bytes_max as usize + PREAMBLE_BYTES_MAX;
                let tail_from = (bad_at + window).min(bytes.len());
                if !is_last || first_nonzero(&bytes[tail_from..]).is_some() {
                    return Err(WalError::Corrupt {
                        file: storage.describe(&name),
                        offset: bad_at as u64,
                        reason: if is_last {
                            format!("{reason} (with data after it: not a torn tail write)")
                        } else {
                            format!("{reason} (not in the last segment)")
                        },
                    });
                }
                // A torn tail: zero it durably so new records follow the good ones.
                let end = bad_at + last_nonzero(&bytes[bad_at..]).expect("bad bytes exist") + 1;
                let zeros = vec![0u8; end - bad_at];
                file.write_all_at(&zeros, bad_at as u64)
                    .and_then(|_| file.sync_data())
                    .map_err(|e| {
                        WalError::io("truncate torn tail of", storage.describe(&name), &e)
                    })?;
                off = bad_at;
            }
            segments.push_back(SegmentInfo {
                seq: header.seq,
                name: name.clone(),
                max_entry_index,
            });
            if is_last {
                write_offset = off as u64;
                current = Some((file, bytes.len() as u64, header.batch_bytes_max as usize));
            }
        }
        let (current, current_capacity, current_batch_bytes_max) =
            current.expect("one segment at least");
        let recovered = Recovered {
            hard_state: state.hard_state,
            snapshot: state.snapshot,
            entries: log.entries,
        };
        let known_last = recovered
            .entries
            .last()
            .map(|e| e.index)
            .or(state.snapshot.map(|s| s.0));
        state.last_index = Some(state.last_index.unwrap_or(known_last.unwrap_or(0)));
        assert_eq!(
            state.last_index,
            Some(known_last.unwrap_or(0)),
            "recovered last index"
        );
        let mut wal = Wal {
            storage,
            options,
            segments,
            current,
            current_capacity,
            current_batch_bytes_max,
            write_offset,
            state,
            preparing: None,
            poisoned: None,
            buf: Vec::new(),
        };
        wal.begin_prepare_next();
        Ok((wal, recovered))
    }

    fn current_seq(&self) -> u64 {
        self.segments.back().expect("a current segment").seq
    }

    fn begin_prepare_next(&mut self) {
        let seq = self.current_seq() + 1;
        let header = SegmentHeader {
            seq,
            batch_bytes_max: self.options.batch_bytes_max,
        };
        self.storage.begin_prepare(
            &format::segment_file_name(seq),
            &format::segment_tmp_name(seq),
            header.encode().to_vec(),
            self.options.segment_bytes,
        );
        self.preparing = Some(seq);
    }

    /// Moves writing to the next segment (prepared off the commit path). Fails without
    /// poisoning if the segment could not be prepared (e.g. ENOSPC).
    fn roll(&mut self) -> Result<(), WalError> {
        let seq = self.current_seq() + 1;
        let name = format::segment_file_name(seq);
        if self.preparing.is_none() {
            self.begin_prepare_next();
        }
        assert_eq!(self.preparing, Some(seq));
        self.preparing = None;
        if let Err(e) = self.storage.finish_prepare() {
            return Err(WalError::io("prepare", self.storage.describe(&name), &e));
        }
        let mut file = self
            .storage
            .open(&name)
            .map_err(|e| WalError::io("open", self.storage.describe(&name), &e))?;
        let capacity = file
            .len_bytes()
            .map_err(|e| WalError::io("stat", self.storage.describe(&name), &e))?;
        assert!(
            capacity >= self.options.segment_bytes,
            "prepared segment is short"
        );
        self.current = file;
        self.current_capacity = capacity;
        self.current_batch_bytes_max = self.options.batch_bytes_max as usize;
        self.write_offset = SEGMENT_HEADER_BYTES as u64;
        self.segments.push_back(SegmentInfo {
            seq,
            name,
            max_entry_index: None,
        });
        self.begin_prepare_next();
        Ok(())
    }

    /// Appends one group of records durably (one write, one sync).
    pub fn append(&mut self, records: &[WalRecord]) -> Result<(), WalError> {
        self.commit_group(&[records]).pop().expect("one result")
    }

    /// Appends several independent appends as one group: each is validated on its own
    /// (an invalid one is rejected alone); the valid ones are written together and synced
    /// once (more than once only if they exceed `batch_bytes_max` or fill the segment).
    /// Returns one result per append, in order; `Ok` means durable.
    pub fn commit_group<R: AsRef<[WalRecord]>>(
        &mut self,
        appends: &[R],
    ) -> Vec<Result<(), WalError>> {
        let mut results: Vec<Option<Result<(), WalError>>> = vec![None; appends.len()];
        if let Some(reason) = &self.poisoned {
            return vec![
                Err(WalError::Poisoned {
                    reason: reason.clone()
                });
                appends.len()
            ];
        }
        let mut tail = self.state.clone();
        let mut members: Vec<usize> = Vec::new();
        let mut chunk_bytes = 0usize; // bytes of appends in this chunk (preamble excluded)
        let mut chunk_max_entry: Option<u64> = None;
        self.buf.clear();
        for (i, recs) in appends.iter().enumerate() {
            let recs = recs.as_ref();
            let mut st = tail.clone();
            let mut bytes = 0usize;
            let mut max_entry = None;
            let mut rejected = None;
            for r in recs {
                if let Err(reason) = st.apply(r) {
                    rejected = Some(WalError::InvalidRecord { reason });
                    break;
                }
                bytes += format::encoded_len(r);
                if let WalRecord::Entry { index, .. } = r {
                    max_entry = max_entry.max(Some(*index));
                }
            }
            if rejected.is_none() && bytes > self.options.batch_bytes_max as usize {
                rejected = Some(WalError::TooLarge {
                    bytes,
                    batch_bytes_max: self.options.batch_bytes_max as usize,
                });
            }
            if let Some(e) = rejected {
                results[i] = Some(Err(e));
                continue;
            }
            let fits_batch = chunk_bytes + bytes <= self.current_batch_bytes_max;
            let fits_segment = self.write_offset
                + (self.buf.len() + bytes + PREAMBLE_BYTES_MAX) as u64
                <= self.current_capacity;
            if !fits_batch || !fits_segment {
                if let Err(e) = self.flush(&tail, chunk_max_entry) {
                    return fail_rest(results, &members, i, e);
                }
                for &m in &members {
                    results[m] = Some(Ok(()));
                }
                members.clear();
                chunk_bytes = 0;
                chunk_max_entry = None;
                let fits_segment_now = self.write_offset + (bytes + PREAMBLE_BYTES_MAX) as u64
                    <= self.current_capacity
                    && bytes <= self.current_batch_bytes_max;
                if !fits_segment_now {
                    if let Err(e) = self.roll() {
                        return fail_rest(results, &[], i, e);
                    }
                }
            }
            if self.buf.is_empty() && self.write_offset == SEGMENT_HEADER_BYTES as u64 {
                for r in self.state.preamble() {
                    format::encode_record(&r, &mut self.buf);
                }
            }
            let before = self.buf.len();
            for r in recs {
                format::encode_record(r, &mut self.buf);
            }
            assert_eq!(self.buf.len() - before, bytes);
            chunk_bytes += bytes;
            chunk_max_entry = chunk_max_entry.max(max_entry);
            tail = st;
            members.push(i);
        }
        if let Err(e) = self.flush(&tail, chunk_max_entry) {
            return fail_rest(results, &members, appends.len(), e);
        }
        for &m in &members {
            results[m] = Some(Ok(()));
        }
        results
            .into_iter()
            .map(|r| r.expect("every append has a result"))
            .collect()
    }

    /// Writes and syncs `self.buf` at the write offset; on success the log's state
    /// becomes `tail`. A failure poisons the log.
    fn flush(&mut self, tail: &LogState, max_entry: Option<u64>) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let end = self.write_offset + self.buf.len() as u64;
        assert!(
            end <= self.current_capacity,
            "a write past the prepared segment"
        );
        let name = self.segments.back().expect("current").name.clone();
        let res = self
            .current
            .write_all_at(&self.buf, self.write_offset)
            .map_err(|e| WalError::io("write", self.storage.describe(&name), &e))
            .and_then(|_| {
                self.current
                    .sync_data()
                    .map_err(|e| WalError::io("fdatasync", self.storage.describe(&name), &e))
            });
        self.buf.clear();
        if let Err(e) = res {
            self.poisoned = Some(e.to_string());
            return Err(e);
        }
        self.write_offset = end;
        self.state = tail.clone();
        let seg = self.segments.back_mut().expect("current");
        seg.max_entry_index = seg.max_entry_index.max(max_entry);
        Ok(())
    }

    /// Frees every segment (except the one being written) whose entries all have an index
    /// below `index`, oldest first. `index` must be at most one past the logged snapshot
    /// marker. Returns how many segments were freed.
    pub fn release_below(&mut self, index: u64) -> Result<usize, WalError> {
        match self.state.snapshot {
            Some((s, _)) if index.saturating_sub(1) <= s => {}
            _ => return Err(WalError::NoSnapshot { index }),
        }
        let mut freed = 0;
        while self.segments.len() > 1 {
            let first = &self.segments[0];
            if first.max_entry_index.is_some_and(|m| m >= index) {
                break;
            }
            let name = first.name.clone();
            self.storage
                .remove(&name)
                .map_err(|e| WalError::io("remove", self.storage.describe(&name), &e))?;
            self.segments.pop_front();
            freed += 1;
        }
        Ok(freed)
    }

    /// The durable hard state, snapshot marker and last entry index.
    pub fn hard_state(&self) -> Option<HardState> {
        self.state.hard_state
    }
    pub fn snapshot(&self) -> Option<(u64, u64)> {
        self.state.snapshot
    }
    /// Raft's last index: the last entry's or the snapshot marker's, 0 for an empty log.
    pub fn last_index(&self) -> u64 {
        self.state.last_index.expect("known once open")
    }
    /// Sequence numbers of the live segments, oldest first.
    pub fn segment_seqs(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.seq).collect()
    }
    /// Why the log stopped taking appends, if it did.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }
}

/// Opens and reads segment `seq` whole, checking its header.
fn read_image<S: Storage>(
    storage: &mut S,
    seq: u64,
) -> Result<(String, S::File, SegmentHeader, Vec<u8>), WalError> {
    let name = format::segment_file_name(seq);
    let mut f = storage
        .open(&name)
        .map_err(|e| WalError::io("open", storage.describe(&name), &e))?;
    let len = f
        .len_bytes()
        .map_err(|e| WalError::io("stat", storage.describe(&name), &e))?;
    let mut bytes = vec![0u8; len as usize];
    f.read_exact_at(&mut bytes, 0)
        .map_err(|e| WalError::io("read", storage.describe(&name), &e))?;
    let header = SegmentHeader::decode(&bytes).map_err(|r| WalError::Corrupt {
        file: storage.describe(&name),
        offset: 0,
        reason: r.to_string(),
    })?;
    if header.seq != seq {
        return Err(WalError::Corrupt {
            file: storage.describe(&name),
            offset: format::SEGMENT_SEQ_OFFSET as u64,
            reason: format!(
                "header names segment {} but the file name says {seq}",
                header.seq
            ),
        });
    }
    Ok((name, f, header, bytes))
}

fn prepare_segment<S: Storage>(
    storage: &mut S,
    seq: u64,
    options: &WalOptions,
) -> Result<(), WalError> {
    let header = SegmentHeader {
        seq,
        batch_bytes_max: options.batch_bytes_max,
    };
    let name = format::segment_file_name(seq);
    storage.begin_prepare(
        &name,
        &format::segment_tmp_name(seq),
        header.encode().to_vec(),
        options.segment_bytes,
    );
    storage
        .finish_prepare()
        .map_err(|e| WalError::io("prepare", storage.describe(&name), &e))
}

/// Fails `members` (a chunk that did not become durable) and every append from `from` on
/// that has no result yet, with `e`.
fn fail_rest(
    mut results: Vec<Option<Result<(), WalError>>>,
    members: &[usize],
    from: usize,
    e: WalError,
) -> Vec<Result<(), WalError>> {
    for &m in members {
        results[m] = Some(Err(e.clone()));
    }
    for r in results.iter_mut().skip(from) {
        if r.is_none() {
            *r = Some(Err(e.clone()));
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every append has a result"))
        .collect()
}
