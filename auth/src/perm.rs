//! Merged range permissions of one user: etcd 3.4's `range_perm_cache.go` and the parts of
//! `pkg/adt` (interval tree over "affine" byte strings) it relies on, reproduced literally so
//! that edge cases (empty keys, `\0` range ends, adjacent ranges) answer as etcd answers.
//!
//! Affine order: an empty byte string is greater than every non-empty one (it stands for +inf),
//! non-empty strings compare bytewise.

use std::cmp::Ordering;

use crate::store::{PermType, Permission};

/// etcd's `BytesAffineComparable.Compare`.
pub fn affine_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

/// A half-open interval `[begin, end)` in affine order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
}

impl Interval {
    /// etcd's `NewBytesAffinePoint`: `[key, key + "\0")`.
    pub fn point(key: &[u8]) -> Interval {
        let mut end = key.to_vec();
        end.push(0);
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    /// etcd's `Interval.Compare(other) == 0`: the two intervals intersect.
    pub fn intersects(&self, other: &Interval) -> bool {
        let left_of = affine_cmp(&self.begin, &other.begin) == Ordering::Less
            && affine_cmp(&self.end, &other.begin) != Ordering::Greater;
        let right_of = affine_cmp(&self.begin, &other.end) != Ordering::Less;
        !left_of && !right_of
    }

    /// The interval a granted permission covers (etcd's `getMergedPerms`).
    pub fn of_permission(perm: &Permission) -> Interval {
        if perm.range_end.is_empty() {
            return Interval::point(&perm.key);
        }
        // A range end of "\0" means "every key >= key": an empty (= +inf) end.
        let end = if perm.range_end.as_slice() == [0] {
            Vec::new()
        } else {
            perm.range_end.clone()
        };
        Interval {
            begin: perm.key.clone(),
            end,
        }
    }
}

/// Intervals sorted by begin (stable: ties keep insertion order, as etcd's tree does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalSet {
    intervals: Vec<Interval>,
}

impl IntervalSet {
    pub fn from_unsorted(mut intervals: Vec<Interval>) -> IntervalSet {
        intervals.sort_by(|a, b| affine_cmp(&a.begin, &b.begin));
        IntervalSet { intervals }
    }

    pub fn len(&self) -> usize {
        self.intervals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// etcd's `IntervalTree.Intersects`: some interval intersects `query`.
    pub fn intersects(&self, query: &Interval) -> bool {
        self.intervals.iter().any(|ivl| query.intersects(ivl))
    }

    /// etcd's `IntervalTree.Contains`: the intervals intersecting `query`, visited in begin
    /// order, are contiguous and together cover all of `query`.
    pub fn contains(&self, query: &Interval) -> bool {
        let mut min_begin: Option<&[u8]> = None;
        let mut max_end: &[u8] = &[];
        for ivl in self.intervals.iter().filter(|ivl| query.intersects(ivl)) {
            match min_begin {
                None => {
                    min_begin = Some(&ivl.begin);
                    max_end = &ivl.end;
                }
                Some(_) => {
                    if affine_cmp(max_end, &ivl.begin) == Ordering::Less {
                        return false;
                    }
                    if affine_cmp(&ivl.end, max_end) == Ordering::Greater {
                        max_end = &ivl.end;
                    }
                }
            }
        }
        match min_begin {
            None => false,
            Some(begin) => {
                affine_cmp(max_end, &query.end) != Ordering::Less
                    && affine_cmp(begin, &query.begin) != Ordering::Greater
            }
        }
    }
}

/// A user's read and write permissions merged over all of its roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnifiedPerms {
    pub read: IntervalSet,
    pub write: IntervalSet,
}

impl UnifiedPerms {
    /// Merges permissions in the order etcd inserts them (roles in the user's sorted order,
    /// each role's permissions in key order).
    pub fn merge<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> UnifiedPerms {
        let mut read = Vec::new();
        let mut write = Vec::new();
        for perm in perms {
            let ivl = Interval::of_permission(perm);
            match perm.perm_type {
                PermType::Read => read.push(ivl),
                PermType::Write => write.push(ivl),
                PermType::ReadWrite => {
                    read.push(ivl.clone());
                    write.push(ivl);
                }
            }
        }
        UnifiedPerms {
            read: IntervalSet::from_unsorted(read),
            write: IntervalSet::from_unsorted(write),
        }
    }

    /// etcd's `isRangeOpPermitted` for a READ or WRITE check (`ReadWrite` asks for both).
    pub fn permits(&self, key: &[u8], range_end: &[u8], perm: PermType) -> bool {
        match perm {
            PermType::Read => Self::check(&self.read, key, range_end),
            PermType::Write => Self::check(&self.write, key, range_end),
            PermType::ReadWrite => {
                Self::check(&self.read, key, range_end) && Self::check(&self.write, key, range_end)
            }
        }
    }

    fn check(set: &IntervalSet, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return set.intersects(&Interval::point(key));
        }
        let end = if range_end == [0] {
            Vec::new()
        } else {
            range_end.to_vec()
        };
        set.contains(&Interval {
            begin: key.to_vec(),
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(key: &str, end: &str, t: PermType) -> Permission {
        Permission {
            perm_type: t,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    fn ivl(b: &str, e: &str) -> Interval {
        Interval {
            begin: b.as_bytes().to_vec(),
            end: e.as_bytes().to_vec(),
        }
    }

    /// Cases of etcd's `range_perm_cache_test.go` (TestRangePermission), which pin the
    /// merging of adjacent and overlapping ranges.
    #[test]
    fn etcd_range_permission_cases() {
        let cases: Vec<(Vec<Interval>, &str, &str, bool)> = vec![
            (vec![ivl("a", "c"), ivl("x", "z")], "a", "z", false),
            (
                vec![ivl("a", "f"), ivl("c", "d"), ivl("f", "z")],
                "a",
                "z",
                true,
            ),
            (
                vec![ivl("a", "d"), ivl("a", "b"), ivl("c", "f")],
                "a",
                "f",
                true,
            ),
            (
                vec![ivl("a", "d"), ivl("a", "b"), ivl("c", "f")],
                "a",
                "g",
                false,
            ),
            (vec![ivl("a", "")], "a", "zzz", true),
            (vec![ivl("a", "b"), ivl("b", "")], "a", "", true),
            (vec![ivl("a", "b"), ivl("c", "")], "a", "", false),
        ];
        for (i, (ivls, b, e, want)) in cases.into_iter().enumerate() {
            let set = IntervalSet::from_unsorted(ivls);
            assert_eq!(set.contains(&ivl(b, e)), want, "case {i}");
        }
    }

    /// Cases of etcd's `TestKeyPermission`.
    #[test]
    fn etcd_key_permission_cases() {
        let cases: Vec<(Vec<Interval>, &str, bool)> = vec![
            (vec![ivl("a", "c"), ivl("x", "z")], "f", false),
            (vec![ivl("a", "f"), ivl("c", "d"), ivl("f", "z")], "b", true),
            (vec![ivl("a", "d"), ivl("a", "b"), ivl("c", "f")], "d", true),
            (
                vec![ivl("a", "d"), ivl("a", "b"), ivl("c", "f")],
                "f",
                false,
            ),
        ];
        for (i, (ivls, k, want)) in cases.into_iter().enumerate() {
            let set = IntervalSet::from_unsorted(ivls);
            assert_eq!(
                set.intersects(&Interval::point(k.as_bytes())),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn from_key_and_prefix_and_point() {
        let u = UnifiedPerms::merge(&[
            perm("/p/", "/p0", PermType::ReadWrite),
            perm("k1", "k5", PermType::Read),
            perm("fk", "\0", PermType::Write),
            perm("one", "", PermType::Read),
        ]);
        assert!(u.permits(b"k1", b"", PermType::Read));
        assert!(u.permits(b"k1", b"k5", PermType::Read));
        assert!(!u.permits(b"k1", b"k6", PermType::Read));
        assert!(u.permits(b"k2", b"", PermType::Write), "k2 >= fk");
        assert!(!u.permits(b"fa", b"", PermType::Write));
        assert!(u.permits(b"zzz", b"\0", PermType::Write));
        assert!(!u.permits(b"fa", b"\0", PermType::Write));
        assert!(u.permits(b"/p/x", b"", PermType::ReadWrite));
        assert!(u.permits(b"one", b"", PermType::Read));
        assert!(
            !u.permits(b"one", b"onf", PermType::Read),
            "a point does not cover a range"
        );
        assert!(
            u.permits(b"one", b"one\0", PermType::Read),
            "but covers [one, one\\0)"
        );
    }
}
