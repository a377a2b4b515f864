//! `ferrite snapshot restore|status`: etcdctl 3.4's offline snapshot commands for ferrite's
//! snapshot image (what `etcdctl snapshot save` writes from ferrite's Maintenance.Snapshot).
//!
//! Image: the store's `write_snapshot` stream (docs/format.md, `"FeSNAP01"` ...), zero-padded
//! to a multiple of 512 bytes, then the SHA-256 of everything before it (32 bytes) — the same
//! framing etcd uses, so etcdctl's size check (`size % 512 == 32`) finds the hash.
//!
//! `restore <file> [--data-dir D] [--name N] [--initial-cluster ..] [--initial-cluster-token ..]
//! [--initial-advertise-peer-urls ..] [--skip-hash-check]` writes `D/member/snap/db` with every
//! key, revision and lease of the image; the Raft state is reset (no WAL: the server bootstraps a
//! fresh log whose membership is the given initial cluster, as etcd's restore does). A data dir
//! that exists is refused with etcd's message.
//!
//! `status <file> [-w table|json]`: hash (the store's HashKV hash of the image's latest
//! revision), revision, total keys (live keys at that revision) and total size (file bytes).
//!
//! Non-goals: restoring etcd's bbolt images, `--wal-dir` outside the data dir.

use std::path::{Path, PathBuf};

use ferrite_btree::{MvccStore, RangeOptions, StoreOptions};
use sha2::{Digest, Sha256};

use crate::raft_core::{APPLIED_INDEX_META_KEY, APPLIED_TERM_META_KEY};

/// etcd's trailing-hash framing: a 512-byte aligned image plus a 32-byte SHA-256.
const IMAGE_ALIGN_BYTES: usize = 512;
const HASH_BYTES: usize = 32;

/// etcdctl's exit codes.
const EXIT_ERROR: i32 = 1;
const EXIT_BAD_ARGS: i32 = 128;

/// Runs `ferrite snapshot <args>`; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let res = match args.first().map(String::as_str) {
        Some("restore") => restore_cmd(&args[1..]),
        Some("status") => status_cmd(&args[1..]),
        _ => Err((
            EXIT_BAD_ARGS,
            "usage: ferrite snapshot restore <filename> [flags] | ferrite snapshot status <filename> [-w table|json]"
                .to_string(),
        )),
    };
    match res {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("Error: {msg}");
            code
        }
    }
}

type CmdResult = Result<(), (i32, String)>;

/// `--flag=value`, `--flag value` and bare boolean flags; the rest are positional.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

fn parse_args(args: &[String], booleans: &[&str], known: &[&str]) -> Result<Args, (i32, String)> {
    let mut out = Args {
        positional: Vec::new(),
        flags: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            out.positional.push(a.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if !known.contains(&name.as_str()) && !booleans.contains(&name.as_str()) {
            return Err((EXIT_BAD_ARGS, format!("unknown flag: --{name}")));
        }
        let value = if booleans.contains(&name.as_str()) {
            inline.or(Some("true".into()))
        } else {
            match inline {
                Some(v) => Some(v),
                None => Some(
                    it.next()
                        .cloned()
                        .ok_or((EXIT_BAD_ARGS, format!("flag needs an argument: --{name}")))?,
                ),
            }
        };
        out.flags.push((name, value));
    }
    Ok(out)
}

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// The image's store stream and whether a trailing hash was present and matched.
fn read_image(path: &Path, skip_hash_check: bool) -> Result<(Vec<u8>, u64), (i32, String)> {
    let data =
        std::fs::read(path).map_err(|e| (EXIT_ERROR, format!("open {}: {e}", path.display())))?;
    let size = data.len() as u64;
    let has_hash = data.len() % IMAGE_ALIGN_BYTES == HASH_BYTES;
    if !has_hash {
        if !skip_hash_check {
            return Err((
                EXIT_ERROR,
                "snapshot missing hash but --skip-hash-check=false".into(),
            ));
        }
        return Ok((data, size));
    }
    let (body, sha) = data.split_at(data.len() - HASH_BYTES);
    if !skip_hash_check {
        let got = Sha256::digest(body);
        if got.as_slice() != sha {
            return Err((
                EXIT_ERROR,
                format!("expected sha256 {}, got {}", go_bytes(sha), go_bytes(&got)),
            ));
        }
    }
    Ok((body.to_vec(), size))
}

/// Go's `%v` of a byte slice: `[1 2 3]`.
fn go_bytes(b: &[u8]) -> String {
    let parts: Vec<String> = b.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(" "))
}

fn restore_cmd(args: &[String]) -> CmdResult {
    let a = parse_args(
        args,
        &["skip-hash-check"],
        &[
            "data-dir",
            "wal-dir",
            "name",
            "initial-cluster",
            "initial-cluster-token",
            "initial-advertise-peer-urls",
            "endpoints",
        ],
    )?;
    if a.positional.len() != 1 {
        return Err((
            EXIT_BAD_ARGS,
            "snapshot restore requires exactly one argument".into(),
        ));
    }
    let name = a.get("name").unwrap_or("default").to_string();
    let peer_urls = a
        .get("initial-advertise-peer-urls")
        .unwrap_or("http://localhost:2380")
        .to_string();
    let initial_cluster = a
        .get("initial-cluster")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{name}={peer_urls}"));
    // etcd checks that this member is in the initial cluster with its advertised peer URLs.
    let mine: Vec<&str> = initial_cluster
        .split(',')
        .filter_map(|m| m.split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, u)| u)
        .collect();
    if mine.is_empty() {
        return Err((
            EXIT_ERROR,
            format!("couldn't find local name {name:?} in the initial cluster configuration"),
        ));
    }
    for u in peer_urls.split(',') {
        if !mine.contains(&u) {
            return Err((
                EXIT_ERROR,
                format!(
                    "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={peer_urls}",
                    mine.join(",")
                ),
            ));
        }
    }
    let skip = a.get("skip-hash-check").is_some_and(|v| v != "false");
    let data_dir = PathBuf::from(
        a.get("data-dir")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{name}.etcd")),
    );
    if data_dir.exists() {
        return Err((
            EXIT_ERROR,
            format!("data-dir {:?} exists", data_dir.display().to_string()),
        ));
    }
    if let Some(w) = a.get("wal-dir") {
        if Path::new(w).exists() {
            return Err((EXIT_ERROR, format!("wal-dir {w:?} exists")));
        }
    }
    let (body, _) = read_image(Path::new(&a.positional[0]), skip)?;
    let snap_dir = data_dir.join("member").join("snap");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|e| (EXIT_ERROR, format!("mkdir {}: {e}", snap_dir.display())))?;
    let db = snap_dir.join("db");
    let store = MvccStore::restore(&db, &mut body.as_slice(), StoreOptions::default())
        .map_err(|e| (EXIT_ERROR, format!("restoring {}: {e}", db.display())))?;
    // Forget the old cluster's Raft position: the server bootstraps a fresh log.
    let mut w = store.writer();
    w.delete_meta(APPLIED_INDEX_META_KEY);
    w.delete_meta(APPLIED_TERM_META_KEY);
    w.commit(true)
        .map_err(|e| (EXIT_ERROR, format!("committing {}: {e}", db.display())))?;
    let rev = store.read().revision();
    drop(w);
    drop(store);
    println!(
        "{{\"level\":\"info\",\"msg\":\"restored snapshot\",\"path\":{:?},\"data-dir\":{:?},\"revision\":{rev}}}",
        a.positional[0],
        data_dir.display().to_string()
    );
    Ok(())
}

fn status_cmd(args: &[String]) -> CmdResult {
    let a = parse_args(args, &[], &["w", "write-out", "endpoints"])?;
    if a.positional.len() != 1 {
        return Err((
            EXIT_BAD_ARGS,
            "snapshot status requires exactly one argument".into(),
        ));
    }
    let format = a.get("w").or(a.get("write-out")).unwrap_or("simple");
    let (body, size) = read_image(Path::new(&a.positional[0]), true)?;
    let tmp = std::env::temp_dir().join(format!(
        "ferrite-snapshot-status-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&tmp).map_err(|e| (EXIT_ERROR, e.to_string()))?;
    let result = (|| -> Result<(u32, i64, i64), String> {
        let store = MvccStore::restore(
            &tmp.join("db"),
            &mut body.as_slice(),
            StoreOptions::default(),
        )
        .map_err(|e| format!("not a ferrite snapshot: {e}"))?;
        let view = store.read();
        let rev = view.revision();
        let all = RangeOptions {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        let keys = view.range(&all).map_err(|e| e.to_string())?.count;
        let (hash, _) = store.hash_kv(0).map_err(|e| e.to_string())?;
        Ok((hash, rev, keys))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    let (hash, rev, keys) = result.map_err(|e| (EXIT_ERROR, e))?;
    match format {
        "json" => println!(
            "{{\"hash\":{hash},\"revision\":{rev},\"totalKey\":{keys},\"totalSize\":{size}}}"
        ),
        "table" => {
            let cells = [
                format!("{hash:x}"),
                rev.to_string(),
                keys.to_string(),
                humanize_bytes(size),
            ];
            let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = cells
                .iter()
                .zip(heads)
                .map(|(c, h)| c.len().max(h.len()) + 2)
                .collect();
            let line: String = widths
                .iter()
                .map(|w| format!("+{}", "-".repeat(*w)))
                .collect::<String>()
                + "+";
            let center = |s: &str, w: usize| {
                let left = (w - s.len()) / 2;
                format!("{}{s}{}", " ".repeat(left), " ".repeat(w - s.len() - left))
            };
            println!("{line}");
            let head: String = heads
                .iter()
                .zip(&widths)
                .map(|(h, w)| format!("|{}", center(h, *w)))
                .collect();
            println!("{head}|");
            println!("{line}");
            let row: String = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    // tablewriter right-aligns numbers, left-aligns the rest.
                    if i == 1 || i == 2 {
                        format!("| {c:>width$} ", width = w - 2)
                    } else {
                        format!("| {c:<width$} ", width = w - 2)
                    }
                })
                .collect();
            println!("{row}|");
            println!("{line}");
        }
        _ => println!("{hash:x}, {rev}, {keys}, {}", humanize_bytes(size)),
    }
    Ok(())
}

/// go-humanize's `Bytes` (SI units): `512 B`, `20 kB`, `2.1 MB`.
fn humanize_bytes(size: u64) -> String {
    if size < 10 {
        return format!("{size} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((size as f64).ln() / 1000f64.ln()).floor() as usize;
    let val = (size as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", units[e])
    } else {
        format!("{val:.0} {}", units[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_like_go() {
        assert_eq!(humanize_bytes(5), "5 B");
        assert_eq!(humanize_bytes(512), "512 B");
        assert_eq!(humanize_bytes(20_480), "20 kB");
        assert_eq!(humanize_bytes(2_097_152), "2.1 MB");
    }
}
