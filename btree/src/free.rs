//! The writer's set of reusable pages, kept as runs of consecutive ids so that a commit can take
//! its pages from one run: then its pages go out as one large write instead of one write per
//! page, and the commit's fdatasync flushes one extent instead of hundreds (on the test
//! machine's disk, 100 scattered 4 KiB pages take ~4x as long to sync as 100 consecutive ones;
//! docs/benchmarks.md, "B+tree").

use std::collections::{BTreeMap, BTreeSet};

use crate::page::PageId;

/// Free pages as maximal runs `start -> length`, indexed by length for best-fit.
#[derive(Default, Debug)]
pub struct FreePages {
    runs: BTreeMap<PageId, u64>,
    by_len: BTreeSet<(u64, PageId)>,
    count: u64,
}

#[allow(clippy::len_without_is_empty)] // never asked
impl FreePages {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    fn add_run(&mut self, start: PageId, len: u64) {
        debug_assert!(len > 0);
        self.runs.insert(start, len);
        self.by_len.insert((len, start));
    }
    fn remove_run(&mut self, start: PageId) -> u64 {
        let len = self.runs.remove(&start).expect("run");
        assert!(self.by_len.remove(&(len, start)), "run index out of step");
        len
    }

    /// The run holding `id`, if any.
    fn run_of(&self, id: PageId) -> Option<(PageId, u64)> {
        let (&s, &l) = self.runs.range(..=id).next_back()?;
        (id < s + l).then_some((s, l))
    }

    pub fn contains(&self, id: PageId) -> bool {
        self.run_of(id).is_some()
    }

    /// Adds `id`; false if it was free already.
    pub fn insert(&mut self, id: PageId) -> bool {
        if self.contains(id) {
            return false;
        }
        let mut start = id;
        let mut len = 1;
        if let Some((&s, &l)) = self.runs.range(..id).next_back() {
            if s + l == id {
                self.remove_run(s);
                start = s;
                len += l;
            }
        }
        if self.runs.contains_key(&(id + 1)) {
            len += self.remove_run(id + 1);
        }
        self.add_run(start, len);
        self.count += 1;
        true
    }

    /// Adds the `len` pages from `start`; false (and nothing added) if any of them is free
    /// already.
    pub fn insert_run(&mut self, start: PageId, len: u64) -> bool {
        assert!(len > 0, "empty run");
        let end = start + len;
        if self.run_of(start).is_some() || self.runs.range(start..end).next().is_some() {
            return false;
        }
        let (mut s, mut l) = (start, len);
        if let Some((&ps, &pl)) = self.runs.range(..start).next_back() {
            if ps + pl == start {
                self.remove_run(ps);
                (s, l) = (ps, pl + l);
            }
        }
        if self.runs.contains_key(&end) {
            l += self.remove_run(end);
        }
        self.add_run(s, l);
        self.count += len;
        true
    }

    /// Adds `ids` (sorted here), a run of consecutive ids at a time; false at the first id
    /// that was free already (the runs before it are added).
    pub fn insert_all(&mut self, ids: &mut [PageId]) -> bool {
        ids.sort_unstable();
        let mut i = 0;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() && ids[j] == ids[j - 1] + 1 {
                j += 1;
            }
            if !self.insert_run(ids[i], (j - i) as u64) {
                return false;
            }
            i = j;
        }
        true
    }

    /// Removes the `n` pages starting at `start`, which must all be free.
    fn take_at(&mut self, start: PageId, n: u64) {
        let (s, l) = self.run_of(start).expect("taking pages that are not free");
        assert!(
            start + n <= s + l,
            "taking pages past the end of a free run"
        );
        self.remove_run(s);
        if start > s {
            self.add_run(s, start - s);
        }
        if start + n < s + l {
            self.add_run(start + n, s + l - start - n);
        }
        self.count -= n;
    }

    pub fn last(&self) -> Option<PageId> {
        self.runs.iter().next_back().map(|(s, l)| s + l - 1)
    }
    pub fn pop_last(&mut self) -> Option<PageId> {
        let id = self.last()?;
        self.take_at(id, 1);
        Some(id)
    }

    /// Free pages below `cutoff`.
    pub fn count_below(&self, cutoff: PageId) -> usize {
        self.runs
            .range(..cutoff)
            .map(|(s, l)| (*l).min(cutoff - s))
            .sum::<u64>() as usize
    }

    /// Every free page, ascending.
    pub fn iter(&self) -> impl Iterator<Item = PageId> + '_ {
        self.runs.iter().flat_map(|(s, l)| *s..*s + *l)
    }

    /// The first `n` pages of the shortest run that holds at least `n` (best fit: long runs
    /// stay for large commits), or `None`.
    pub fn take_run(&mut self, n: u64) -> Option<PageId> {
        assert!(n > 0);
        let &(_, start) = self.by_len.range((n, 0)..).next()?;
        self.take_at(start, n);
        Some(start)
    }

    /// Up to `n` pages from the longest runs of at least `len_min` pages, longest first;
    /// returns them as (start, length) runs.
    pub fn take_longest(&mut self, mut n: u64, len_min: u64) -> Vec<(PageId, u64)> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(&(len, start)) = self.by_len.iter().next_back() else {
                break;
            };
            if len < len_min {
                break;
            }
            let k = len.min(n);
            self.take_at(start, k);
            out.push((start, k));
            n -= k;
        }
        out
    }

    /// The `n` lowest free pages (fewer if fewer are free), ascending.
    pub fn take_lowest(&mut self, n: u64) -> Vec<PageId> {
        let mut out = Vec::with_capacity(n as usize);
        while (out.len() as u64) < n {
            let Some((&s, &l)) = self.runs.iter().next() else {
                break;
            };
            let k = l.min(n - out.len() as u64);
            self.take_at(s, k);
            out.extend(s..s + k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: &FreePages, want: &BTreeSet<PageId>) {
        assert_eq!(f.iter().collect::<BTreeSet<_>>(), *want);
        assert_eq!(f.len(), want.len());
        // Runs are maximal: no two touch.
        let runs: Vec<(PageId, u64)> = f.runs.iter().map(|(s, l)| (*s, *l)).collect();
        for w in runs.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "runs {w:?} touch or overlap");
        }
        assert_eq!(f.by_len.len(), f.runs.len());
    }

    #[test]
    fn runs_merge_split_and_match_a_set() {
        let mut f = FreePages::default();
        let mut model = BTreeSet::new();
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for step in 0..20_000 {
            match next() % 6 {
                0..=1 => {
                    let id = 2 + next() % 500;
                    assert_eq!(f.insert(id), model.insert(id), "step {step}");
                }
                2 => {
                    let (start, len) = (2 + next() % 500, 1 + next() % 6);
                    let fresh = (start..start + len).all(|id| !model.contains(&id));
                    assert_eq!(f.insert_run(start, len), fresh, "step {step}");
                    if fresh {
                        model.extend(start..start + len);
                    }
                }
                3 => {
                    let n = 1 + next() % 8;
                    if let Some(s) = f.take_run(n) {
                        for id in s..s + n {
                            assert!(model.remove(&id), "step {step}: took non-free {id}");
                        }
                    } else {
                        // No run of n: confirm.
                        let v: Vec<_> = model.iter().copied().collect();
                        let longest = v
                            .chunk_by(|a, b| a + 1 == *b)
                            .map(|c| c.len() as u64)
                            .max()
                            .unwrap_or(0);
                        assert!(longest < n, "step {step}");
                    }
                }
                4 => {
                    let n = next() % 10;
                    let got = f.take_lowest(n);
                    let want: Vec<_> = model.iter().copied().take(n as usize).collect();
                    assert_eq!(got, want, "step {step}");
                    for id in got {
                        model.remove(&id);
                    }
                }
                _ => {
                    let (n, len_min) = (next() % 12, next() % 3);
                    let before = model.clone();
                    let mut got = 0;
                    for (s, l) in f.take_longest(n, len_min) {
                        assert!(l >= len_min || got + l == n, "step {step}: short run");
                        for id in s..s + l {
                            assert!(model.remove(&id), "step {step}");
                        }
                        got += l;
                    }
                    let v: Vec<_> = before.iter().copied().collect();
                    let usable: u64 = v
                        .chunk_by(|a, b| a + 1 == *b)
                        .map(|c| c.len() as u64)
                        .filter(|l| *l >= len_min)
                        .sum();
                    assert_eq!(got, n.min(usable), "step {step}");
                }
            }
            check(&f, &model);
            let cutoff = next() % 520;
            assert_eq!(
                f.count_below(cutoff),
                model.range(..cutoff).count(),
                "step {step}"
            );
            assert_eq!(f.last(), model.last().copied());
        }
    }
}
