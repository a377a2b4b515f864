//! Reading a server process's CPU time and memory from /proc (Linux only).

use std::path::Path;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ). `getconf CLK_TCK`, else 100.
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// User + system CPU seconds a process has used so far (its threads included).
pub fn cpu_secs(pid: u32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("/proc/{pid}/stat: no ')' in {text:?}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')' the first field is state (field 3); utime is field 14, stime field 15.
    let get = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: bad field {i}"))
    };
    let ticks = get(11)? + get(12)?;
    Ok(ticks as f64 / clock_ticks_per_sec() as f64)
}

/// Resident set size in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|e| format!("VmRSS {rest:?}: {e}"))?;
            return Ok(kib * 1024);
        }
    }
    Err(format!("/proc/{pid}/status has no VmRSS"))
}

/// Total bytes of the regular files under a directory (its "data-dir size").
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_and_rss() {
        let pid = std::process::id();
        // Burn a little CPU so the counter is non-zero even at 100 Hz.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(x != 1);
        assert!(cpu_secs(pid).unwrap() > 0.0);
        assert!(rss_bytes(pid).unwrap() > 1024 * 1024);
        assert!(cpu_secs(u32::MAX).is_err());
    }

    #[test]
    fn dir_bytes_counts_nested_files() {
        let dir =
            std::env::temp_dir().join(format!("ferrite-bench-dirbytes-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("x"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("a/b/y"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(&dir), 123);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
