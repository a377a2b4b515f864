//! The peer transport over real TCP on 127.0.0.1: three members exchanging every message kind,
//! unreachable peers and reconnects, refused hellos, garbage on the wire, TLS, cluster info.

mod common_peer;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common_peer::*;
use ferrite_net::peer::{
    encode_hello, fetch_cluster_info, put_message_frame, ClusterInfo, Hello, HelloKind, MemberInfo,
    HELLO_REPLY_BYTES, PROTOCOL_VERSION,
};
use ferrite_raft::{
    ConfState, Entry, EntryKind, Message, MessageKind, SnapshotChunk, SnapshotMeta,
};

const KINDS: [MessageKind; 15] = [
    MessageKind::Append,
    MessageKind::AppendResp,
    MessageKind::Vote,
    MessageKind::VoteResp,
    MessageKind::PreVote,
    MessageKind::PreVoteResp,
    MessageKind::Heartbeat,
    MessageKind::HeartbeatResp,
    MessageKind::Snapshot,
    MessageKind::SnapshotResp,
    MessageKind::TimeoutNow,
    MessageKind::ReadIndex,
    MessageKind::ReadIndexResp,
    MessageKind::Propose,
    MessageKind::TransferLeader,
];

/// A message of `kind` with every field its kind uses filled with values derived from `n`.
fn sample(kind: MessageKind, from: u64, to: u64, n: u64, snapshot_bytes: usize) -> Message {
    let mut m = Message::new(kind, from, to, 7 + n);
    m.log_term = 6 + n;
    m.index = 1000 + n;
    m.commit = 990 + n;
    m.reject = n % 2 == 1;
    m.reject_hint = 500 + n;
    m.seq = n;
    m.context = format!("ctx-{from}-{to}-{n}").into_bytes();
    if matches!(kind, MessageKind::Append | MessageKind::Propose) {
        m.entries = (0..(n % 50 + 1))
            .map(|i| Entry {
                index: 1001 + n + i,
                term: 7 + n,
                kind: if i % 7 == 3 {
                    EntryKind::ConfChange
                } else {
                    EntryKind::Normal
                },
                data: if i == 0 {
                    Vec::new()
                } else {
                    vec![(i % 251) as u8; (i * 37 % 4096) as usize]
                },
            })
            .collect();
    }
    if kind == MessageKind::Snapshot {
        let data: Vec<u8> = (0..snapshot_bytes)
            .map(|i| (i * 31 + n as usize) as u8)
            .collect();
        m.snapshot = Some(SnapshotChunk {
            meta: SnapshotMeta {
                index: 900 + n,
                term: 5,
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    learners: vec![9],
                },
            },
            offset: n * snapshot_bytes as u64,
            total_len: (n + 3) * snapshot_bytes as u64,
            data,
        });
    }
    m
}

fn mesh(n: u64) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=n)
        .map(|id| Node::start(id, NodeOpts::new(0xc1u64 << 32 | 7)))
        .collect();
    for a in &nodes {
        for b in &nodes {
            if a.id != b.id {
                a.set_peer(b.id, vec![b.url()]);
            }
        }
    }
    nodes
}

#[test]
fn three_members_exchange_every_kind_intact_and_in_order() {
    let nodes = mesh(3);
    let rounds = 3u64;
    let snapshot_bytes = 3 << 20; // several MiB per chunk
    let mut expected: Vec<Vec<Message>> = vec![Vec::new(); 4];
    for r in 0..rounds {
        for a in &nodes {
            let mut batch = Vec::new();
            for b in &nodes {
                if a.id == b.id {
                    continue;
                }
                for (k, kind) in KINDS.iter().enumerate() {
                    let m = sample(*kind, a.id, b.id, r * 100 + k as u64, snapshot_bytes);
                    expected[b.id as usize].push(m.clone());
                    batch.push(m);
                }
            }
            a.send(batch);
        }
    }
    for b in &nodes {
        let want = &expected[b.id as usize];
        let mut got: Vec<Message> = (0..want.len()).map(|_| b.recv()).collect();
        // Per sender, the order is the send order.
        for from in 1..=3u64 {
            let w: Vec<&Message> = want.iter().filter(|m| m.from == from).collect();
            let g: Vec<&Message> = got.iter().filter(|m| m.from == from).collect();
            assert_eq!(g.len(), w.len(), "count from {from} to {}", b.id);
            for (x, y) in g.iter().zip(w.iter()) {
                assert!(
                    x == y,
                    "message from {from} to {} differs: {:?}",
                    b.id,
                    x.kind
                );
            }
        }
        got.clear();
        assert!(
            b.inbox.recv_timeout(Duration::from_millis(200)).is_err(),
            "no extra messages"
        );
    }
    for n in &nodes {
        assert!(n.take_unreachable().is_empty(), "nobody was unreachable");
    }
    for n in nodes {
        n.stop();
    }
}

#[test]
fn down_peer_is_unreachable_then_messages_flow_once_it_starts() {
    let b_addr = free_addr();
    let a = Node::start(1, NodeOpts::new(5));
    a.set_peer(2, vec![format!("http://{b_addr}")]);
    a.send(vec![probe(1, 2, 0)]);
    a.wait_unreachable(2);
    // Unknown peers are unreachable too.
    a.send(vec![probe(1, 77, 0)]);
    a.wait_unreachable(77);

    let mut o = NodeOpts::new(5);
    o.listen = b_addr;
    let b = Node::start(2, o);
    probe_until_delivered(&a, &b, 1000);
    // Once connected, everything arrives in order.
    a.send((0..500).map(|i| probe(1, 2, 5000 + i)).collect());
    for i in 0..500 {
        assert_eq!(b.recv_seq_from(5000), 5000 + i);
    }
    a.stop();
    b.stop();
}

#[test]
fn restarted_listener_is_reconnected() {
    let a = Node::start(1, NodeOpts::new(6));
    let b = Node::start(2, NodeOpts::new(6));
    let b_addr = b.addr;
    a.set_peer(2, vec![b.url()]);
    probe_until_delivered(&a, &b, 0);
    b.stop();
    let mut o = NodeOpts::new(6);
    o.listen = b_addr;
    let b = Node::start(2, o);
    probe_until_delivered(&a, &b, 10_000);
    a.send((0..100).map(|i| probe(1, 2, 20_000 + i)).collect());
    for i in 0..100 {
        assert_eq!(b.recv_seq_from(20_000), 20_000 + i);
    }
    a.stop();
    b.stop();
}

#[test]
fn cluster_id_mismatch_is_refused_and_logged() {
    capture_logs();
    let a = Node::start(1, NodeOpts::new(0xaaaa_0001));
    let b = Node::start(2, NodeOpts::new(0xbbbb_0002));
    a.set_peer(2, vec![b.url()]);
    a.send(vec![probe(1, 2, 1)]);
    a.wait_unreachable(2);
    // The acceptor names both cluster ids and the remote address.
    let line = wait_log(&["request cluster ID mismatch", "aaaa0001", "bbbb0002"]);
    assert!(line.contains("127.0.0.1:"), "remote address logged: {line}");
    // The dialer logs the refusal with the remote's ids too.
    wait_log(&["peer refused our connection", "bbbb0002", "ClusterMismatch"]);
    assert!(b.inbox.recv_timeout(Duration::from_millis(300)).is_err());

    // Wrong receiver: a hello addressed to member 3 reaching member 2.
    let c = Node::start(3, NodeOpts::new(0xbbbb_0002));
    c.set_peer(4, vec![b.url()]);
    c.send(vec![probe(3, 4, 1)]);
    c.wait_unreachable(4);
    wait_log(&["request sent to the wrong member", "requested-member-id=4"]);
    assert!(b.inbox.recv_timeout(Duration::from_millis(300)).is_err());
    a.stop();
    b.stop();
    c.stop();
}

/// Opens a raw connection to `node` and sends a valid hello from `from`; returns the stream
/// after reading the reply.
fn raw_conn(node: &Node, cluster_id: u64, from: u64) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&encode_hello(&Hello {
        version: PROTOCOL_VERSION,
        kind: HelloKind::Raft,
        cluster_id,
        from,
        to: node.id,
    }))
    .unwrap();
    let mut r = [0u8; HELLO_REPLY_BYTES];
    s.read_exact(&mut r).unwrap();
    let reply = ferrite_net::peer::decode_hello_reply(&r).unwrap();
    assert_eq!(reply.status, ferrite_net::peer::HelloStatus::Ok);
    s
}

/// Reads until the peer closes the connection (EOF or reset); panics on timeout.
fn assert_closed(mut s: std::net::TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

#[test]
fn garbage_torn_and_oversize_frames_close_only_that_connection() {
    let cluster = 0x6a6a;
    let a = Node::start(1, NodeOpts::new(cluster));
    let mut o = NodeOpts::new(cluster);
    o.frame_bytes_max = Some(1 << 20);
    let b = Node::start(2, o);
    a.set_peer(2, vec![b.url()]);
    probe_until_delivered(&a, &b, 0);

    let mut good = Vec::new();
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    put_message_frame(&mut fbb, &mut good, &probe(1, 2, 900_000));

    // Garbage instead of a hello.
    let mut s = std::net::TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0x5a; 64]).unwrap();
    assert_closed(s);
    // A frame with a flipped payload byte (crc mismatch).
    let mut s = raw_conn(&b, cluster, 1);
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0x40;
    s.write_all(&bad).unwrap();
    assert_closed(s);
    // A frame announcing more than the limit.
    let mut s = raw_conn(&b, cluster, 1);
    let mut h = Vec::new();
    h.extend_from_slice(&((1u32 << 20) + 1).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    s.write_all(&h).unwrap();
    assert_closed(s);
    // A valid checksum over bytes that are not a flatbuffer message.
    let mut s = raw_conn(&b, cluster, 1);
    let mut f = Vec::new();
    ferrite_net::peer::put_frame(&mut f, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    s.write_all(&f).unwrap();
    assert_closed(s);
    // A message claiming another sender than the hello.
    let mut s = raw_conn(&b, cluster, 3);
    s.write_all(&good).unwrap();
    assert_closed(s);
    // A torn frame: half a frame, then the dialer goes away.
    let mut s = raw_conn(&b, cluster, 1);
    s.write_all(&good[..good.len() / 2]).unwrap();
    drop(s);
    // A valid frame on a raw connection is delivered.
    let mut s = raw_conn(&b, cluster, 1);
    s.write_all(&good).unwrap();
    assert_eq!(b.recv_seq_from(900_000), 900_000);
    drop(s);

    // The regular connection from a was never disturbed: in order, nothing lost.
    a.send((0..200).map(|i| probe(1, 2, 1000 + i)).collect());
    for i in 0..200 {
        assert_eq!(b.recv_seq_from(1000), 1000 + i);
    }
    a.stop();
    b.stop();
}

fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_der = cert.der().clone();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

#[test]
fn tls_round_trip() {
    let (server, client) = tls_configs();
    let opts = || {
        let mut o = NodeOpts::new(0x7175);
        o.server_tls = Some(server.clone());
        o.client_tls = Some(client.clone());
        o
    };
    let a = Node::start(1, opts());
    let b = Node::start(2, opts());
    a.set_peer(2, vec![format!("https://{}", b.addr)]);
    b.set_peer(1, vec![format!("https://{}", a.addr)]);
    probe_until_delivered(&a, &b, 0);
    probe_until_delivered(&b, &a, 0);
    let m = sample(MessageKind::Snapshot, 1, 2, 1, 2 << 20);
    let batch: Vec<Message> = (0..50)
        .map(|i| sample(KINDS[i % KINDS.len()], 1, 2, i as u64, 1 << 10))
        .collect();
    a.send(vec![m.clone()]);
    a.send(batch.clone());
    assert!(b.recv() == m);
    for want in &batch {
        assert!(&b.recv() == want);
    }
    // A plain-TCP dial to a TLS listener gets nothing through.
    let c = Node::start(3, NodeOpts::new(0x7175));
    c.set_peer(2, vec![b.url()]);
    c.send(vec![probe(3, 2, 1)]);
    c.wait_unreachable(2);
    assert!(b.inbox.recv_timeout(Duration::from_millis(300)).is_err());
    a.stop();
    b.stop();
    c.stop();
}

/// A CA and a leaf it signs (for server and client auth), as rustls types.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    fn leaf(
        &self,
        cn: &str,
    ) -> (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )),
        )
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        Arc::new(roots)
    }
}

/// Mutual TLS as `--peer-client-cert-auth` with `--peer-trusted-ca-file` sets it up: the
/// listener requires a client certificate signed by `trusted`; the dialer presents a leaf of
/// `signer` and verifies servers against `trusted`.
fn mutual_tls(
    trusted: &TestCa,
    signer: &TestCa,
    cn: &str,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certs, key) = signer.leaf(cn);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        trusted.roots(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(trusted.roots())
        .with_client_auth_cert(certs, key)
        .unwrap();
    (Arc::new(server), Arc::new(client))
}

#[test]
fn mutual_tls_refuses_a_peer_signed_by_another_ca() {
    let ca = TestCa::new("cluster-ca");
    let other = TestCa::new("other-ca");
    let node =
        |id: u64, (server, client): (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)| {
            let mut o = NodeOpts::new(0x6d74);
            o.server_tls = Some(server);
            o.client_tls = Some(client);
            Node::start(id, o)
        };
    let a = node(1, mutual_tls(&ca, &ca, "m1"));
    let b = node(2, mutual_tls(&ca, &ca, "m2"));
    // Trusts the cluster's CA (so it would accept the members' server certificates) but
    // presents a client certificate of another CA.
    let c = node(3, mutual_tls(&ca, &other, "m3"));
    let https = |n: &Node| format!("https://{}", n.addr);
    a.set_peer(2, vec![https(&b)]);
    b.set_peer(1, vec![https(&a)]);
    c.set_peer(2, vec![https(&b)]);
    probe_until_delivered(&a, &b, 0);
    probe_until_delivered(&b, &a, 0);
    c.send(vec![probe(3, 2, 77)]);
    c.wait_unreachable(2);
    // The members keep talking; nothing from the refused dialer arrives.
    let seq = probe_until_delivered(&a, &b, 1000);
    assert!(seq >= 1000);
    while let Ok(m) = b.inbox.recv_timeout(Duration::from_millis(300)) {
        assert_ne!(m.from, 3, "a message from the refused peer was delivered");
    }
    // Cluster info over mutual TLS: the member's client config gets an answer, the foreign
    // one does not.
    let (_, good) = mutual_tls(&ca, &ca, "m9");
    let (_, bad) = mutual_tls(&ca, &other, "m9");
    let urls = vec![https(&a)];
    let got = on_executor(move || async move {
        let t = Duration::from_secs(10);
        (
            fetch_cluster_info(&urls, Some(good), t).await.is_ok(),
            fetch_cluster_info(&urls, Some(bad), t).await.is_err(),
        )
    });
    assert!(got.0, "cluster info with the cluster's certificate");
    assert!(got.1, "cluster info with a foreign certificate is refused");
    a.stop();
    b.stop();
    c.stop();
}

#[test]
fn fetch_cluster_info_from_a_running_member() {
    let info = ClusterInfo {
        cluster_id: 0xfeed_beef,
        members: vec![
            MemberInfo {
                id: 1,
                name: "m1".into(),
                peer_urls: vec!["http://127.0.0.1:22380".into()],
                client_urls: vec!["http://127.0.0.1:22379".into()],
                is_learner: false,
            },
            MemberInfo {
                id: 4,
                name: String::new(),
                peer_urls: vec!["http://127.0.0.1:22480".into(), "http://h:1".into()],
                client_urls: Vec::new(),
                is_learner: true,
            },
        ],
    };
    let mut o = NodeOpts::new(0xfeed_beef);
    o.info = Some(info.clone());
    let a = Node::start(1, o);
    let (server, client) = tls_configs();
    let mut o = NodeOpts::new(0xfeed_beef);
    o.info = Some(info.clone());
    o.server_tls = Some(server);
    let t = Node::start(2, o);
    let dead = format!("http://{}", free_addr());
    let urls = vec![dead.clone(), a.url()];
    let tls_urls = vec![format!("https://{}", t.addr)];
    let got = on_executor(move || async move {
        let plain = fetch_cluster_info(&urls, None, Duration::from_secs(20)).await;
        let tls = fetch_cluster_info(&tls_urls, Some(client), Duration::from_secs(20)).await;
        let none = fetch_cluster_info(&[dead], None, Duration::from_secs(5)).await;
        (
            plain.map_err(|e| e.to_string()),
            tls.map_err(|e| e.to_string()),
            none.is_err(),
        )
    });
    assert_eq!(got.0.unwrap(), info);
    assert_eq!(got.1.unwrap(), info);
    assert!(got.2, "nobody listening: an error");
    a.stop();
    t.stop();
}

#[test]
fn changed_urls_are_redialed_and_removed_peers_dropped() {
    let a = Node::start(1, NodeOpts::new(0x11));
    let b = Node::start(2, NodeOpts::new(0x11));
    // Member 2 moved to a new address (a second instance stands in for it).
    let b2 = Node::start(2, NodeOpts::new(0x11));
    a.set_peer(2, vec![b.url()]);
    probe_until_delivered(&a, &b, 0);
    a.set_peer(2, vec![b2.url()]);
    probe_until_delivered(&a, &b2, 100);
    a.send((0..50).map(|i| probe(1, 2, 1000 + i)).collect());
    for i in 0..50 {
        assert_eq!(b2.recv_seq_from(1000), 1000 + i);
    }
    assert!(b.inbox.recv_timeout(Duration::from_millis(200)).is_err());
    // A removed peer gets nothing and is reported unreachable when addressed.
    a.cmd(Cmd::RemovePeer(2));
    a.send(vec![probe(1, 2, 5000)]);
    a.wait_unreachable(2);
    assert!(b2.inbox.recv_timeout(Duration::from_millis(300)).is_err());
    a.stop();
    b.stop();
    b2.stop();
}
