//! The Watch service: one bidirectional stream carries many watchers.
//!
//! Each stream is served by one local task on the accepting core. It subscribes to the watch
//! hub before reading any revision, so nothing published afterwards is missed; a watcher whose
//! start revision is in the past (or whose stream lagged behind the hub's bounded ring) catches
//! up from the store's history (`ReadView::events`), then follows the hub again. Responses go to
//! the client through a bounded channel: when the client reads slowly this task waits, the hub
//! ring overruns for this stream only, and the stream later catches up from the store. The
//! apply loop never waits for a watcher. When a follower replaces its store with the leader's
//! snapshot image, the hub sends a reset: every watcher catches up from the new store (or is
//! canceled with the compact revision when its next revision was compacted), as etcd's
//! `watchableStore.Restore` moves every watcher to unsynced.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use ferrite_btree::{Event, EventKind, RangeOptions};
use ferrite_net::pb::etcdserverpb::{
    watch_create_request::FilterType, watch_request, watch_server::Watch, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use ferrite_net::pb::mvccpb;
use futures_channel::mpsc;
use futures_util::{SinkExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};

use crate::kvops::to_pb_kv;
use crate::state::Shared;
use crate::watch_hub::HubBatch;

/// Responses buffered towards one client stream.
pub const WATCH_SEND_BUFFER_MAX: usize = 128;
/// Events read from the store per catch-up step.
pub const CATCHUP_EVENTS_MAX: usize = 1000;
/// Watchers per stream.
pub const WATCHERS_PER_STREAM_MAX: usize = 100_000;

const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

#[derive(Clone)]
pub struct WatchService {
    pub shared: Arc<Shared>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let creds = crate::authz::Credentials::of(&req);
        let input = req.into_inner();
        let (tx, rx) = mpsc::channel(WATCH_SEND_BUFFER_MAX);
        let shared = self.shared.clone();
        glommio::spawn_local(async move {
            let mut s = StreamState::new(shared, tx);
            s.creds = creds;
            s.run(input).await;
        })
        .detach();
        Ok(Response::new(Box::pin(rx.map(Ok))))
    }
}

struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    /// The next revision this watcher must see.
    next_rev: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// False: must catch up from the store before following the hub.
    synced: bool,
    /// Events were sent since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn matches(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.key.as_slice()
        } else if self.end.as_slice() == b"\0" {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.end.as_slice()
        }
    }
    fn wants(&self, e: &Event) -> bool {
        match e.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        }
    }
}

struct StreamState {
    shared: Arc<Shared>,
    out: mpsc::Sender<WatchResponse>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    closed: bool,
    /// The stream's credentials: every create is checked for READ on its range.
    creds: crate::authz::Credentials,
}

enum Wake {
    Client(Option<Result<WatchRequest, Status>>),
    Hub(Result<Arc<HubBatch>, broadcast::error::RecvError>),
    Tick,
}

type HubStream = Pin<Box<dyn Stream<Item = Result<Arc<HubBatch>, broadcast::error::RecvError>>>>;

impl StreamState {
    fn new(shared: Arc<Shared>, out: mpsc::Sender<WatchResponse>) -> Self {
        StreamState {
            shared,
            out,
            watchers: BTreeMap::new(),
            next_id: 0,
            closed: false,
            creds: Default::default(),
        }
    }

    async fn send(&mut self, r: WatchResponse) {
        if self.out.send(r).await.is_err() {
            self.closed = true;
        }
    }

    fn header(&self, revision: i64) -> Option<ferrite_net::pb::etcdserverpb::ResponseHeader> {
        Some(self.shared.header(revision))
    }

    async fn run(&mut self, mut input: Streaming<WatchRequest>) {
        let sub = self.shared.hub.subscribe();
        let mut hub: HubStream = Box::pin(futures_util::stream::unfold(sub, |mut rx| async move {
            let r = rx.recv().await;
            if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                return None;
            }
            Some((r, rx))
        }));
        let interval = self
            .shared
            .progress_interval
            .max(std::time::Duration::from_millis(100));
        let mut ticker = Box::pin(glommio::timer::Timer::new(interval));
        while !self.closed {
            let wake = std::future::poll_fn(|cx| {
                if let Poll::Ready(m) = input.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Client(m));
                }
                if let Poll::Ready(Some(b)) = hub.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Hub(b));
                }
                if ticker.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Tick);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Client(None) | Wake::Client(Some(Err(_))) => break,
                Wake::Client(Some(Ok(req))) => self.on_request(req).await,
                Wake::Hub(Ok(batch)) if batch.reset => {
                    // The store was replaced by a snapshot image: catch up from it.
                    for w in self.watchers.values_mut() {
                        w.synced = false;
                    }
                    self.catch_up_all().await;
                }
                Wake::Hub(Ok(batch)) => self.on_batch(&batch).await,
                Wake::Hub(Err(_lagged)) => {
                    for w in self.watchers.values_mut() {
                        w.synced = false;
                    }
                    self.catch_up_all().await;
                }
                Wake::Tick => {
                    ticker.set(glommio::timer::Timer::new(interval));
                    self.on_tick().await;
                }
            }
        }
    }

    async fn on_request(&mut self, req: WatchRequest) {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // Only meaningful once every watcher is caught up: etcd answers with the
                // store revision, which no synced watcher is behind.
                self.catch_up_all().await;
                let rev = self.shared.current_revision();
                self.send(WatchResponse {
                    header: self.header(rev),
                    watch_id: -1,
                    ..Default::default()
                })
                .await;
            }
            None => {}
        }
    }

    async fn cancel(&mut self, id: i64) {
        if self.watchers.remove(&id).is_none() {
            return;
        }
        let rev = self.shared.current_revision();
        self.send(WatchResponse {
            header: self.header(rev),
            watch_id: id,
            canceled: true,
            ..Default::default()
        })
        .await;
    }

    async fn create(&mut self, c: WatchCreateRequest) {
        let permitted = crate::authz::check(&self.shared, &self.creds, |s, who| {
            s.is_range_permitted(who, &c.key, &c.range_end)
        })
        .await;
        if let Err(e) = permitted {
            // etcd's isWatchPermitted: the create is refused on the stream, which stays open.
            use ferrite_auth::AuthError;
            let reason = match e {
                crate::errors::EtcdError::Auth(
                    AuthError::InvalidAuthToken | AuthError::AuthOldRevision | AuthError::UserEmpty,
                ) => e.to_string(),
                _ => AuthError::PermissionDenied.to_string(),
            };
            let rev = self.shared.current_revision();
            self.send(WatchResponse {
                header: self.header(rev),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            })
            .await;
            return;
        }
        let mut key = c.key.to_vec();
        if key.is_empty() {
            key = vec![0];
        }
        let end = c.range_end.to_vec();
        let wsrev = self.shared.current_revision();
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                self.send(WatchResponse {
                    header: self.header(wsrev),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: DUPLICATE_ID.to_string(),
                    ..Default::default()
                })
                .await;
                return;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            self.send(WatchResponse {
                header: self.header(wsrev),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: "etcdserver: too many watchers on one stream".to_string(),
                ..Default::default()
            })
            .await;
            return;
        }
        let start = if c.start_revision == 0 {
            wsrev + 1
        } else {
            c.start_revision
        };
        let filters = &c.filters;
        let w = Watcher {
            key,
            end,
            next_rev: start,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            synced: false,
            sent_since_tick: false,
        };
        self.watchers.insert(id, w);
        self.send(WatchResponse {
            header: self.header(wsrev),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await;
        self.catch_up(id).await;
    }

    async fn catch_up_all(&mut self) {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.catch_up(id).await;
        }
    }

    /// Reads the watcher's missed history from a store snapshot, then marks it synced.
    async fn catch_up(&mut self, id: i64) {
        loop {
            let view = self.shared.store.read();
            let Some(w) = self.watchers.get(&id) else {
                return;
            };
            let view_rev = view.revision();
            if w.next_rev > view_rev {
                let w = self.watchers.get_mut(&id).expect("present");
                w.synced = true;
                return;
            }
            let evs = match view.events(w.next_rev, &w.key, &w.end, CATCHUP_EVENTS_MAX) {
                Ok(e) => e,
                Err(ferrite_btree::MvccError::Compacted) => {
                    let compact = view.compact_revision();
                    self.watchers.remove(&id);
                    self.send(WatchResponse {
                        header: self.header(0),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compact,
                        ..Default::default()
                    })
                    .await;
                    return;
                }
                Err(e) => {
                    self.watchers.remove(&id);
                    self.send(WatchResponse {
                        header: self.header(view_rev),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: format!("etcdserver: {e}"),
                        ..Default::default()
                    })
                    .await;
                    return;
                }
            };
            let full = evs.len() >= CATCHUP_EVENTS_MAX;
            let next = if full {
                evs.last().map_or(view_rev + 1, |e| e.kv.mod_revision + 1)
            } else {
                view_rev + 1
            };
            let pb = self.convert(id, &view, evs);
            let w = self.watchers.get_mut(&id).expect("present");
            w.next_rev = next;
            if !full {
                w.synced = true;
            }
            if !pb.is_empty() {
                self.deliver(id, view_rev, pb).await;
            }
            if !full || self.closed {
                return;
            }
        }
    }

    /// Filters and converts events for watcher `id`, adding prev_kv where asked.
    fn convert(
        &self,
        id: i64,
        view: &ferrite_btree::ReadView,
        evs: Vec<Event>,
    ) -> Vec<mvccpb::Event> {
        let w = &self.watchers[&id];
        let mut out = Vec::new();
        for e in evs {
            if !w.matches(&e.kv.key) || !w.wants(&e) {
                continue;
            }
            // etcd's prev_kv is the key as of the revision before the event's (a Range at
            // mod_revision - 1), so a version written earlier in the same txn is not one.
            let prev = if w.prev_kv {
                match e.prev_kv {
                    Some(p) if p.mod_revision < e.kv.mod_revision => Some(to_pb_kv(p)),
                    _ if e.kind == EventKind::Put && e.kv.version == 1 => None,
                    _ => view
                        .range(&RangeOptions {
                            key: e.kv.key.clone(),
                            revision: e.kv.mod_revision - 1,
                            ..Default::default()
                        })
                        .ok()
                        .and_then(|r| r.kvs.into_iter().next())
                        .map(to_pb_kv),
                }
            } else {
                None
            };
            out.push(mvccpb::Event {
                r#type: match e.kind {
                    EventKind::Put => mvccpb::event::EventType::Put as i32,
                    EventKind::Delete => mvccpb::event::EventType::Delete as i32,
                },
                kv: Some(to_pb_kv(e.kv)),
                prev_kv: prev,
            });
        }
        out
    }

    async fn on_batch(&mut self, batch: &HubBatch) {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        let view = self.shared.store.read();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            if !w.synced {
                continue;
            }
            if w.next_rev > batch.revision {
                continue;
            }
            let first_rev = batch
                .events
                .first()
                .map_or(batch.revision, |e| e.kv.mod_revision);
            if w.next_rev < first_rev && w.next_rev <= batch.revision {
                // A gap (should not happen while synced): catch up from the store.
                let w = self.watchers.get_mut(&id).expect("present");
                w.synced = false;
                self.catch_up(id).await;
                continue;
            }
            let next_rev = w.next_rev;
            let evs: Vec<Event> = batch
                .events
                .iter()
                .filter(|e| e.kv.mod_revision >= next_rev && w.matches(&e.kv.key) && w.wants(e))
                .cloned()
                .collect();
            self.watchers.get_mut(&id).expect("present").next_rev = batch.revision + 1;
            let pb = self.convert(id, &view, evs);
            // One response per revision, as etcd notifies per write txn.
            let mut start = 0;
            while start < pb.len() {
                let rev = pb[start].kv.as_ref().map_or(0, |k| k.mod_revision);
                let mut end = start;
                while end < pb.len() && pb[end].kv.as_ref().map_or(0, |k| k.mod_revision) == rev {
                    end += 1;
                }
                self.deliver(id, rev, pb[start..end].to_vec()).await;
                start = end;
            }
        }
    }

    /// Sends events to the client, fragmenting if the watcher asked for it and the response
    /// exceeds the request size limit.
    async fn deliver(&mut self, id: i64, revision: i64, events: Vec<mvccpb::Event>) {
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        w.sent_since_tick = true;
        let fragment = w.fragment;
        let resp = WatchResponse {
            header: self.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        };
        let limit = self.shared.limits.request_bytes_max;
        if !fragment || resp.encoded_len() <= limit || resp.events.len() <= 1 {
            self.send(resp).await;
            return;
        }
        let mut parts: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
        let mut size = 0usize;
        for e in resp.events {
            let n = e.encoded_len() + 8;
            if size + n > limit && !parts.last().expect("non-empty").is_empty() {
                parts.push(Vec::new());
                size = 0;
            }
            size += n;
            parts.last_mut().expect("non-empty").push(e);
        }
        let last = parts.len() - 1;
        for (i, evs) in parts.into_iter().enumerate() {
            self.send(WatchResponse {
                header: self.header(revision),
                watch_id: id,
                events: evs,
                fragment: i != last,
                ..Default::default()
            })
            .await;
        }
    }

    async fn on_tick(&mut self) {
        let rev = self.shared.current_revision();
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.synced && !w.sent_since_tick)
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.sent_since_tick = false;
        }
        for id in ids {
            self.send(WatchResponse {
                header: self.header(rev),
                watch_id: id,
                ..Default::default()
            })
            .await;
        }
    }
}
