//! Differential check of net/proto/ against etcd's own .proto files: every message, field
//! (name, number, type, label, oneof), enum value, service and method must match.
//!
//! Needs etcd's sources (Debian's golang-etcd-server-dev), so it is ignored by default:
//!
//! ```text
//! apt-get install -y golang-etcd-server-dev   # or: apt-get download + dpkg -x into DIR
//! ETCD_GO_SRC=/usr/share/gocode/src/go.etcd.io cargo test -p ferrite-net --release \
//!     --test etcd_protos -- --ignored
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use protox::prost_reflect::prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

const ETCD_FILES: &[&str] = &[
    "etcd/mvcc/mvccpb/kv.proto",
    "etcd/auth/authpb/auth.proto",
    "etcd/etcdserver/etcdserverpb/rpc.proto",
    "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto",
];

/// Drops gogoproto and google.api.http imports and options, which do not change the wire.
fn strip_annotations(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(at) = rest.find("option (google.api.http)") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let open = after.find('{').expect("http option has a body");
        let mut depth = 0;
        let mut end = open;
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let tail = &after[end + 1..];
        rest = tail.trim_start().strip_prefix(';').unwrap_or(tail);
    }
    out.push_str(rest);
    out.lines()
        .filter(|l| {
            let t = l.trim();
            !(t.starts_with("import \"gogoproto/")
                || t.starts_with("import \"google/api/")
                || t.starts_with("option (gogoproto."))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn etcd_descriptors(go_src: &Path) -> FileDescriptorSet {
    let dir = std::env::temp_dir().join(format!("ferrite-etcd-protos-{}", std::process::id()));
    for f in ETCD_FILES {
        let src = std::fs::read_to_string(go_src.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", go_src.join(f).display()));
        assert!(!src.contains("(gogoproto.") || src.contains("option (gogoproto."));
        let dst = dir.join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(&dst, strip_annotations(&src)).unwrap();
    }
    let fds = protox::compile(ETCD_FILES, [&dir]).expect("etcd's protos compile once stripped");
    std::fs::remove_dir_all(&dir).unwrap();
    fds
}

#[derive(Debug, PartialEq)]
struct FieldShape {
    number: i32,
    label: i32,
    r#type: i32,
    type_name: String,
    oneof: Option<String>,
}

fn collect_messages(
    prefix: &str,
    msgs: &[DescriptorProto],
    out: &mut BTreeMap<String, BTreeMap<String, FieldShape>>,
    enums: &mut BTreeMap<String, Vec<(String, i32)>>,
) {
    for m in msgs {
        let name = format!("{prefix}.{}", m.name());
        let mut fields = BTreeMap::new();
        for f in &m.field {
            fields.insert(
                f.name().to_string(),
                FieldShape {
                    number: f.number(),
                    label: f.label() as i32,
                    r#type: f.r#type() as i32,
                    type_name: f.type_name().to_string(),
                    oneof: f
                        .oneof_index
                        .map(|i| m.oneof_decl[i as usize].name().to_string()),
                },
            );
        }
        collect_enums(&name, &m.enum_type, enums);
        collect_messages(&name, &m.nested_type, out, enums);
        out.insert(name, fields);
    }
}

fn collect_enums(
    prefix: &str,
    list: &[EnumDescriptorProto],
    out: &mut BTreeMap<String, Vec<(String, i32)>>,
) {
    for e in list {
        out.insert(
            format!("{prefix}.{}", e.name()),
            e.value
                .iter()
                .map(|v| (v.name().to_string(), v.number()))
                .collect(),
        );
    }
}

type Shapes = (
    BTreeMap<String, BTreeMap<String, FieldShape>>,
    BTreeMap<String, Vec<(String, i32)>>,
    BTreeMap<String, Vec<(String, String, String, bool, bool)>>,
);

fn shapes(fds: &FileDescriptorSet) -> Shapes {
    let (mut msgs, mut enums, mut services) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for file in &fds.file {
        let pkg = format!(".{}", file.package());
        collect_messages(&pkg, &file.message_type, &mut msgs, &mut enums);
        collect_enums(&pkg, &file.enum_type, &mut enums);
        for s in &file.service {
            services.insert(
                format!("{pkg}.{}", s.name()),
                s.method
                    .iter()
                    .map(|m| {
                        (
                            m.name().to_string(),
                            m.input_type().to_string(),
                            m.output_type().to_string(),
                            m.client_streaming(),
                            m.server_streaming(),
                        )
                    })
                    .collect(),
            );
        }
    }
    (msgs, enums, services)
}

#[test]
#[ignore = "needs etcd's .proto sources: set ETCD_GO_SRC (see the file's header)"]
fn our_protos_match_etcds() {
    let go_src = PathBuf::from(
        std::env::var("ETCD_GO_SRC")
            .unwrap_or_else(|_| "/usr/share/gocode/src/go.etcd.io".to_string()),
    );
    let theirs = shapes(&etcd_descriptors(&go_src));
    let ours = shapes(
        &FileDescriptorSet::decode(ferrite_net::pb::FILE_DESCRIPTOR_SET).expect("our descriptors"),
    );
    assert!(
        theirs.0.len() > 100,
        "found only {} etcd messages",
        theirs.0.len()
    );
    assert_eq!(ours.0, theirs.0, "messages differ");
    assert_eq!(ours.1, theirs.1, "enums differ");
    assert_eq!(ours.2, theirs.2, "services differ");
}
