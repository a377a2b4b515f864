//! A controllable TCP proxy in front of every member's peer port, for network partitions.
//!
//! Each member listens for peers on a private port and *advertises* its proxy's address, so
//! every peer connection to member `d` goes through proxy `d`. When the proxy accepts a
//! connection it finds which member opened it: the kernel's socket table (`/proc/net/tcp`) maps
//! the connection's source port to a socket inode, and the member whose `/proc/<pid>/fd` holds that
//! inode is the source. This works for any peer protocol (etcd's rafthttp opens several
//! connections per pair, in both directions; ferrite's transport is different) and needs no
//! privileges.
//!
//! Links are undirected pairs of members: [`Net::cut`] of (a, b) closes every open connection
//! between a and b (whichever side dialled) and refuses new ones until [`Net::heal`]. A connection
//! whose source cannot be identified is let through only while its destination has no cut link.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// How long the proxy retries identifying a connection's source (the dialler may not be
/// registered yet right after a restart).
const IDENTIFY_RETRIES_MAX: u32 = 20;
const IDENTIFY_RETRY_DELAY_MS: u64 = 5;

#[derive(Default)]
struct NetState {
    /// member index -> pid of its current process.
    pids: HashMap<usize, u32>,
    /// Cut links, as (min, max) member indexes.
    cut: HashSet<(usize, usize)>,
    /// Open connections: id -> (source member, destination member, abort handles).
    conns: HashMap<u64, (Option<usize>, usize, Vec<AbortHandle>)>,
    listeners: Vec<AbortHandle>,
}

/// The proxies of one cluster.
#[derive(Clone, Default)]
pub struct Net {
    state: Arc<Mutex<NetState>>,
    next_conn: Arc<AtomicU64>,
    identified: Arc<AtomicU64>,
    unidentified: Arc<AtomicU64>,
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Net {
    pub fn new() -> Net {
        Net::default()
    }

    /// Starts the proxy of member `dst`: listens on a fresh loopback port (returned) and forwards
    /// to `127.0.0.1:target_port`. Must be called inside a tokio runtime.
    pub async fn proxy(&self, dst: usize, target_port: u16) -> std::io::Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let net = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, from)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let net = net.clone();
                tokio::spawn(async move {
                    let src = net.identify(from.port(), port).await;
                    let counter = if src.is_some() {
                        &net.identified
                    } else {
                        &net.unidentified
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    net.forward(inbound, src, dst, target_port).await;
                });
            }
        });
        self.lock().listeners.push(task.abort_handle());
        Ok(port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("net lock")
    }

    /// Registers the current process of member `idx` (after every start or restart).
    pub fn set_pid(&self, idx: usize, pid: u32) {
        self.lock().pids.insert(idx, pid);
    }

    /// Cuts the link between a and b: open connections are closed, new ones refused.
    pub fn cut(&self, a: usize, b: usize) {
        assert_ne!(a, b, "a member has no link to itself");
        let mut st = self.lock();
        st.cut.insert(link(a, b));
        let doomed: Vec<u64> = st
            .conns
            .iter()
            .filter(|(_, (s, d, _))| match s {
                Some(s) => link(*s, *d) == link(a, b),
                None => *d == a || *d == b,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in doomed {
            if let Some((_, _, handles)) = st.conns.remove(&id) {
                for h in handles {
                    h.abort();
                }
            }
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// Peer connections accepted so far: (source identified, source unknown).
    pub fn connections(&self) -> (u64, u64) {
        (
            self.identified.load(Ordering::Relaxed),
            self.unidentified.load(Ordering::Relaxed),
        )
    }

    pub fn cut_links(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = self.lock().cut.iter().copied().collect();
        v.sort();
        v
    }

    /// Whether a connection from `src` to `dst` may exist now.
    fn allowed(st: &NetState, src: Option<usize>, dst: usize) -> bool {
        match src {
            Some(s) => !st.cut.contains(&link(s, dst)),
            None => !st.cut.iter().any(|&(a, b)| a == dst || b == dst),
        }
    }

    async fn forward(&self, inbound: TcpStream, src: Option<usize>, dst: usize, target: u16) {
        if !Self::allowed(&self.lock(), src, dst) {
            return; // dropped: the link is cut
        }
        let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
            return; // the member is down: the dialler sees the connection close
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (mut ir, mut iw) = inbound.into_split();
        let (mut or, mut ow) = outbound.into_split();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let net = self.clone();
        let mut st = self.lock();
        if !Self::allowed(&st, src, dst) {
            return; // cut while connecting
        }
        let a = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut ir, &mut ow).await;
        });
        let b = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut or, &mut iw).await;
        });
        let handles = vec![a.abort_handle(), b.abort_handle()];
        st.conns.insert(id, (src, dst, handles.clone()));
        drop(st);
        // When either direction ends, end both (as a TCP proxy closing the other side would).
        tokio::spawn(async move {
            let (a, b) = (a, b);
            tokio::select! {
                _ = a => {},
                _ = b => {},
            }
            for h in handles {
                h.abort();
            }
            net.lock().conns.remove(&id);
        });
    }

    /// The member whose process owns the socket 127.0.0.1:`src_port` connected to our listener
    /// on `listen_port`, or None.
    async fn identify(&self, src_port: u16, listen_port: u16) -> Option<usize> {
        for _ in 0..IDENTIFY_RETRIES_MAX {
            let pids: Vec<(usize, u32)> = self.lock().pids.iter().map(|(i, p)| (*i, *p)).collect();
            let found = tokio::task::spawn_blocking(move || {
                let inode = socket_inode(src_port, listen_port)?;
                let needle = format!("socket:[{inode}]");
                pids.into_iter()
                    .find(|(_, pid)| process_has_socket(*pid, &needle))
                    .map(|(i, _)| i)
            })
            .await
            .ok()
            .flatten();
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(IDENTIFY_RETRY_DELAY_MS)).await;
        }
        None
    }

    /// Stops every proxy and closes every connection.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        for h in st.listeners.drain(..) {
            h.abort();
        }
        for (_, (_, _, hs)) in st.conns.drain() {
            for h in hs {
                h.abort();
            }
        }
    }
}

/// `127.0.0.1:port` as /proc/net/tcp prints it (address as a little-endian hex u32).
fn proc_addr(port: u16) -> String {
    format!("0100007F:{port:04X}")
}

/// The inode of the socket whose local address is 127.0.0.1:`local` and remote 127.0.0.1:`remote`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (l, r) = (proc_addr(local), proc_addr(remote));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == l && f[2] == r)
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

fn process_has_socket(pid: u32, needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path())
            .map(|t| t.as_os_str() == needle)
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The proxy identifies this very process as member 0, forwards, and a cut closes the
    /// connection and refuses new ones until healed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identifies_source_and_cuts_links() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let net = Net::new();
        net.set_pid(0, std::process::id());
        let port = net.proxy(1, echo_port).await.unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(net.lock().conns.values().next().unwrap().0, Some(0));
        net.cut(0, 1);
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "a cut link closes its connections");
        let mut c2 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = c2.write_all(b"ping").await;
        let n = tokio::time::timeout(Duration::from_secs(5), c2.read(&mut buf))
            .await
            .expect("refused promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "a cut link refuses new connections");
        net.heal_all();
        let mut c3 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c3.write_all(b"pong").await.unwrap();
        c3.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        net.shutdown();
    }
}
