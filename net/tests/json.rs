//! The serde impls of the generated types speak etcd's JSON gateway dialect: proto field names,
//! 64-bit integers as strings, bytes as base64, enums by name, defaults omitted.

use ferrite_net::pb::etcdserverpb::*;
use ferrite_net::pb::mvccpb::{event::EventType, Event, KeyValue};

#[test]
fn responses_serialize_like_etcds_gateway() {
    let resp = RangeResponse {
        header: Some(ResponseHeader {
            cluster_id: 14841639068965178418,
            member_id: 10276657743932975437,
            revision: 5,
            raft_term: 2,
        }),
        kvs: vec![KeyValue {
            key: b"foo".to_vec().into(),
            value: b"bar".to_vec().into(),
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            lease: 0,
        }],
        more: false,
        count: 1,
    };
    let json = serde_json::to_string(&resp).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","#,
            r#""revision":"5","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"5","#,
            r#""mod_revision":"5","version":"1","value":"YmFy"}],"count":"1"}"#
        )
    );

    let lease = LeaseGrantResponse {
        header: None,
        id: 7587869121397064707,
        ttl: 60,
        error: String::new(),
    };
    assert_eq!(
        serde_json::to_string(&lease).unwrap(),
        r#"{"ID":"7587869121397064707","TTL":"60"}"#
    );

    let ev = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: b"k".to_vec().into(),
            mod_revision: 9,
            ..Default::default()
        }),
        prev_kv: None,
    };
    assert_eq!(
        serde_json::to_string(&ev).unwrap(),
        r#"{"type":"DELETE","kv":{"key":"aw==","mod_revision":"9"}}"#
    );
    // The default enum value is omitted like any default.
    let put = Event {
        r#type: EventType::Put as i32,
        ..Default::default()
    };
    assert_eq!(serde_json::to_string(&put).unwrap(), "{}");
}

#[test]
fn requests_parse_like_etcds_gateway() {
    // What `curl -d '{"key":"Zm9v","range_end":"Zm9w","limit":10,...}'` sends: integers as
    // numbers or strings, enums by name.
    let req: RangeRequest = serde_json::from_str(
        r#"{"key":"Zm9v","range_end":"Zm9w","limit":10,"revision":"3",
            "sort_order":"DESCEND","sort_target":"MOD","serializable":true}"#,
    )
    .unwrap();
    assert_eq!(&req.key[..], b"foo");
    assert_eq!(&req.range_end[..], b"fop");
    assert_eq!(req.limit, 10);
    assert_eq!(req.revision, 3);
    assert_eq!(req.sort_order(), range_request::SortOrder::Descend);
    assert_eq!(req.sort_target(), range_request::SortTarget::Mod);
    assert!(req.serializable);

    let txn: TxnRequest = serde_json::from_str(
        r#"{"compare":[{"result":"EQUAL","target":"VALUE","key":"Zm9v","value":"YmFy"}],
            "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],
            "failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    )
    .unwrap();
    assert_eq!(txn.compare.len(), 1);
    assert_eq!(
        txn.compare[0].target_union,
        Some(compare::TargetUnion::Value(b"bar".to_vec().into()))
    );
    match &txn.success[0].request {
        Some(request_op::Request::RequestPut(p)) => assert_eq!(&p.value[..], b"baz"),
        other => panic!("unexpected {other:?}"),
    }

    let watch: WatchRequest =
        serde_json::from_str(r#"{"create_request":{"key":"Zm9v","start_revision":"2"}}"#).unwrap();
    match watch.request_union {
        Some(watch_request::RequestUnion::CreateRequest(c)) => {
            assert_eq!(&c.key[..], b"foo");
            assert_eq!(c.start_revision, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn malformed_json_is_an_error() {
    for bad in [
        r#"{"key":"%%%"}"#,       // not base64
        r#"{"limit":"ten"}"#,     // not a number
        r#"{"sort_order":"UP"}"#, // no such enum value
        r#"{"key":"Zm9v""#,       // truncated
    ] {
        assert!(serde_json::from_str::<RangeRequest>(bad).is_err(), "{bad}");
    }
}

#[test]
fn protobuf_round_trip_keeps_every_field() {
    use prost::Message;
    let req = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b"a".to_vec().into(),
            range_end: b"b".to_vec().into(),
            target_union: Some(compare::TargetUnion::ModRevision(42)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: b"a".to_vec().into(),
                    range_end: vec![0].into(),
                    prev_kv: true,
                },
            )),
        }],
        failure: vec![],
    };
    let bytes = req.encode_to_vec();
    // range_end is field 64 of Compare: its tag (64 << 3 | 2) takes two varint bytes.
    assert!(bytes.windows(2).any(|w| w == [0x82, 0x04]));
    assert_eq!(TxnRequest::decode(&bytes[..]).unwrap(), req);
}
