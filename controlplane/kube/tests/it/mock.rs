//! A small in-memory API server behind kube's `Client`, speaking list and
//! watch like the real one: a global resourceVersion, a per-resource event
//! history that watches resume from (410 Gone once compacted), watches held
//! open as streaming bodies, bookmarks, dropped connections.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Body = BoxBody<Bytes, io::Error>;
type Chunk = Result<Frame<Bytes>, io::Error>;

/// A request the server answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub plural: String,
    pub watch: bool,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
}

pub struct ApiServer {
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Inner {
    rv: u64,
    resources: BTreeMap<&'static str, Resource>,
    requests: Vec<Seen>,
    /// coordination.k8s.io/v1 Leases by `namespace/name`.
    leases: BTreeMap<String, Value>,
    /// The next this-many Lease writes get 409 Conflict.
    lease_conflicts: usize,
    /// Every Lease request: (method, status code answered).
    lease_log: Vec<(String, u16)>,
}

#[derive(Default)]
struct Resource {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, watch event line) of every change.
    history: Vec<(u64, Bytes)>,
    /// A watch from a resourceVersion below this gets 410 Gone.
    compacted: u64,
    watches: Vec<mpsc::UnboundedSender<Chunk>>,
    /// Changes are recorded but not sent to open watches.
    paused: bool,
    /// The next this-many lists fail with 500.
    failing_lists: usize,
    /// Answered 404 (the server does not serve the resource).
    unserved: bool,
    /// Answered 403 (RBAC does not grant the resource).
    forbidden: bool,
}

/// plural → (kind, apiVersion).
const RESOURCES: [(&str, &str, &str); 8] = [
    ("namespaces", "Namespace", "v1"),
    ("nodes", "Node", "v1"),
    ("services", "Service", "v1"),
    ("endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
    ("pods", "Pod", "v1"),
    ("networkpolicies", "NetworkPolicy", "networking.k8s.io/v1"),
    ("servicecidrs", "ServiceCIDR", "networking.k8s.io/v1"),
    (
        "clusternetworkpolicies",
        "ClusterNetworkPolicy",
        "policy.networking.k8s.io/v1alpha2",
    ),
];

fn plural_of(kind: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map(|(p, _, _)| *p)
        .unwrap_or_else(|| panic!("unknown kind {kind}"))
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}",
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap_or("")
    )
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

impl ApiServer {
    /// A server holding `objects` (with their `kind`), and a client to it.
    pub fn start(objects: Vec<Value>) -> (ApiServer, Client) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let mut inner = Inner::default();
        for (plural, _, _) in RESOURCES {
            inner.resources.insert(plural, Resource::default());
        }
        let inner = Arc::new(Mutex::new(inner));
        let server = ApiServer {
            inner: inner.clone(),
            task: tokio::spawn(async move {
                while let Some((request, respond)) = handle.next_request().await {
                    let response = if request.uri().path().contains("/leases") {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes());
                        inner
                            .lock()
                            .unwrap()
                            .lease(&parts, &body.unwrap_or_default())
                    } else {
                        inner.lock().unwrap().answer(&request)
                    };
                    respond.send_response(response);
                }
            }),
        };
        for object in objects {
            server.apply(object);
        }
        (server, Client::new(service, "default"))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Creates or replaces an object (ADDED or MODIFIED to open watches).
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"]
            .as_str()
            .expect("fixture has a kind")
            .to_owned();
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let resource = inner.resource(&kind);
        let key = key_of(&object);
        let event = if resource.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        resource.emit(rv, line(event, &object));
        resource.objects.insert(key, object);
    }

    /// Deletes an object (DELETED to open watches).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        let resource = inner.resource(kind);
        let mut object = resource
            .objects
            .remove(&format!("{namespace}/{name}"))
            .expect("deleting an object that exists");
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        resource.emit(rv, line("DELETED", &object));
    }

    /// Sends a BOOKMARK at a new resourceVersion to open watches of `kind`;
    /// returns that resourceVersion.
    pub fn bookmark(&self, kind: &str) -> String {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv.to_string();
        let (_, k, api_version) = RESOURCES.iter().find(|(_, k, _)| *k == kind).unwrap();
        let bookmark = line(
            "BOOKMARK",
            &json!({"kind": k, "apiVersion": api_version, "metadata": {"resourceVersion": rv}}),
        );
        let resource = inner.resource(kind);
        resource.send(&bookmark);
        rv
    }

    /// Changes to `kind` are kept (and replayed to watches that resume from
    /// before them) but not sent to the watches open now.
    pub fn pause(&self, kind: &str) {
        self.lock().resource(kind).paused = true;
    }

    /// Compacts `kind`'s history: open watches get an ERROR 410 event and
    /// end; resuming from any older resourceVersion gets 410 too.
    pub fn expire(&self, kind: &str) {
        let mut inner = self.lock();
        let rv = inner.rv;
        let resource = inner.resource(kind);
        resource.compacted = rv;
        resource.history.clear();
        resource.paused = false;
        let gone = line(
            "ERROR",
            &status(410, "Expired", "too old resource version: 1 (2)"),
        );
        for watch in resource.watches.drain(..) {
            let _ = watch.send(Ok(Frame::data(gone.clone())));
        }
    }

    /// Ends every open watch of `kind`: with a transport error (a reset
    /// connection) or cleanly (as at the server's watch timeout).
    pub fn drop_watches(&self, kind: &str, reset: bool) {
        let mut inner = self.lock();
        let resource = inner.resource(kind);
        resource.paused = false;
        for watch in resource.watches.drain(..) {
            if reset {
                let _ = watch.send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                )));
            }
        }
    }

    /// `kind` is not served from now on: its lists and watches are answered
    /// 404, as by a server without the API (or the objects are kept for
    /// when it is served again).
    pub fn unserve(&self, kind: &str) {
        self.lock().resource(kind).unserved = true;
    }

    /// `kind` is served again (and allowed, if it was forbidden).
    pub fn serve(&self, kind: &str) {
        let mut inner = self.lock();
        let resource = inner.resource(kind);
        resource.unserved = false;
        resource.forbidden = false;
    }

    /// Lists and watches of `kind` are answered 403, as for a ClusterRole
    /// that does not grant them.
    pub fn forbid(&self, kind: &str) {
        self.lock().resource(kind).forbidden = true;
    }

    /// The next `n` lists of `kind` fail with 500.
    pub fn fail_lists(&self, kind: &str, n: usize) {
        self.lock().resource(kind).failing_lists = n;
    }

    /// Every request so far for `kind`.
    pub fn requests(&self, kind: &str) -> Vec<Seen> {
        let plural = plural_of(kind);
        self.lock()
            .requests
            .iter()
            .filter(|s| s.plural == plural)
            .cloned()
            .collect()
    }

    /// The Lease `namespace/name` as stored, if any.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .leases
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// Writes the Lease's spec as another party would (a new
    /// resourceVersion, so any write from an older read conflicts).
    pub fn write_lease(&self, namespace: &str, name: &str, spec: Value) {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv.to_string();
        inner.leases.insert(
            format!("{namespace}/{name}"),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
                "spec": spec}),
        );
    }

    /// The next `n` Lease writes get 409 Conflict.
    pub fn conflict_lease_writes(&self, n: usize) {
        self.lock().lease_conflicts = n;
    }

    /// Every Lease request so far: (method, status code).
    pub fn lease_log(&self) -> Vec<(String, u16)> {
        self.lock().lease_log.clone()
    }

    /// Open watches of `kind`.
    pub fn open_watches(&self, kind: &str) -> usize {
        let mut inner = self.lock();
        let resource = inner.resource(kind);
        resource.watches.retain(|w| !w.is_closed());
        resource.watches.len()
    }
}

impl Inner {
    /// GET / POST / PUT of a Lease, with resourceVersion checks: a PUT
    /// whose resourceVersion is not the stored one is a 409 Conflict, as is
    /// a POST of a Lease that exists.
    fn lease(&mut self, parts: &http::request::Parts, body: &[u8]) -> Response<Body> {
        // /apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]
        let path: Vec<&str> = parts.uri.path().split('/').collect();
        let Some(at) = path.iter().position(|p| *p == "leases") else {
            return full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", "no such path"),
            );
        };
        let namespace = path.get(at - 1).copied().unwrap_or_default().to_owned();
        let sent: Option<Value> = serde_json::from_slice(body).ok();
        let name = match path.get(at + 1) {
            Some(name) => (*name).to_owned(),
            None => sent
                .as_ref()
                .and_then(|s| s["metadata"]["name"].as_str())
                .unwrap_or_default()
                .to_owned(),
        };
        let key = format!("{namespace}/{name}");
        let method = parts.method.as_str().to_owned();
        let (code, answer) = match (parts.method.clone(), sent) {
            (http::Method::GET, _) => match self.leases.get(&key) {
                Some(lease) => (200, lease.clone()),
                None => (
                    404,
                    status(404, "NotFound", &format!("leases {name:?} not found")),
                ),
            },
            (http::Method::POST | http::Method::PUT, Some(mut lease)) => {
                let exists = self.leases.get(&key);
                let stored_rv = exists.map(|l| l["metadata"]["resourceVersion"].clone());
                let conflict = if parts.method == http::Method::POST {
                    exists.is_some()
                } else {
                    stored_rv != Some(lease["metadata"]["resourceVersion"].clone())
                };
                if parts.method == http::Method::PUT && exists.is_none() {
                    (
                        404,
                        status(404, "NotFound", &format!("leases {name:?} not found")),
                    )
                } else if conflict || self.lease_conflicts > 0 {
                    self.lease_conflicts = self.lease_conflicts.saturating_sub(1);
                    (409, status(409, "Conflict", "the object has been modified"))
                } else {
                    self.rv += 1;
                    lease["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                    lease["metadata"]["namespace"] = json!(namespace);
                    self.leases.insert(key, lease.clone());
                    (if method == "POST" { 201 } else { 200 }, lease)
                }
            }
            _ => (400, status(400, "BadRequest", "unsupported Lease request")),
        };
        self.lease_log.push((method, code));
        full(StatusCode::from_u16(code).unwrap(), answer)
    }

    fn resource(&mut self, kind: &str) -> &mut Resource {
        self.resources
            .get_mut(plural_of(kind))
            .expect("every resource exists")
    }

    fn answer(&mut self, request: &Request<kube::client::Body>) -> Response<Body> {
        let uri = request.uri();
        let plural = uri.path().rsplit('/').next().unwrap_or("").to_owned();
        let query: HashMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        self.requests.push(Seen {
            plural: plural.clone(),
            watch,
            query: query.clone(),
        });
        let rv = self.rv;
        let Some((_, kind, api_version)) = RESOURCES.iter().find(|(p, _, _)| *p == plural) else {
            return full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", "no such resource"),
            );
        };
        let Some(resource) = self.resources.get_mut(plural.as_str()) else {
            return full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", "no such resource"),
            );
        };
        if resource.unserved {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "text/plain")
                .body(
                    Full::new(Bytes::from_static(b"404 page not found"))
                        .map_err(|never: Infallible| match never {})
                        .boxed(),
                )
                .unwrap();
        }
        if resource.forbidden {
            let message = format!("{plural} is forbidden: cannot list resource {plural:?}");
            return full(StatusCode::FORBIDDEN, status(403, "Forbidden", &message));
        }
        if !watch {
            if resource.failing_lists > 0 {
                resource.failing_lists -= 1;
                return full(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    status(500, "InternalError", "etcd is having a bad day"),
                );
            }
            let items: Vec<Value> = resource.objects.values().cloned().collect();
            return full(
                StatusCode::OK,
                json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            );
        }
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
        if from < resource.compacted {
            let gone = line("ERROR", &status(410, "Expired", "too old resource version"));
            let _ = tx.send(Ok(Frame::data(gone)));
        } else {
            for (at, event) in &resource.history {
                if *at > from {
                    let _ = tx.send(Ok(Frame::data(event.clone())));
                }
            }
            resource.watches.push(tx);
        }
        let body = StreamBody::new(UnboundedReceiverStream::new(rx)).boxed();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    }
}

impl Resource {
    fn emit(&mut self, rv: u64, event: Bytes) {
        self.history.push((rv, event.clone()));
        if !self.paused {
            self.send(&event);
        }
    }

    fn send(&mut self, event: &Bytes) {
        self.watches
            .retain(|w| w.send(Ok(Frame::data(event.clone()))).is_ok());
    }
}
