//! Compiles net/proto/ (etcd's v3 API, our own copy) into Rust: prost messages, tonic server
//! and client stubs (without tonic's tokio transport), and serde impls (pbjson) that follow
//! etcd's JSON gateway conventions. protox is a pure-Rust protobuf compiler, so no `protoc`
//! binary is needed to build this crate.

use std::path::PathBuf;

use protox::prost::Message;

const PROTO_FILES: &[&str] = &[
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(PROTO_FILES, ["proto"])?;
    let descriptor_bytes = fds.encode_to_vec();
    std::fs::write(out_dir.join("etcd_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        // `bytes::Bytes` for every `bytes` field: decoding slices the request buffer
        // instead of copying, and values can be shared with the store without a copy.
        .bytes(".")
        .compile_fds(fds)?;

    // etcd's gateway (grpc-gateway's JSONPb with OrigName) writes proto field names,
    // 64-bit integers as strings, bytes as base64, enums by name, and omits defaults.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .preserve_proto_field_names()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
