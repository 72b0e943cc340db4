//! One parsed document → the objects in it, by apiVersion and kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};
use setpoint_compute::ClusterObject;
use setpoint_compute::policy::cluster::api as cluster_api;

/// What became of one object of a document.
#[derive(Debug)]
pub(crate) enum Outcome {
    Object {
        object: Box<ClusterObject>,
        /// Where in the document: empty, or `items[i]` within a List.
        item: String,
    },
    Skipped {
        kind: Option<String>,
        name: Option<String>,
        /// Includes the `items[i]: ` prefix within a List.
        reason: String,
    },
    Ignored {
        kind: String,
    },
}

/// Decodes one document. An empty (null) document yields nothing.
pub(crate) fn decode(mut value: Value) -> Vec<Outcome> {
    if let Err(err) = value.apply_merge() {
        return vec![Outcome::Skipped {
            kind: None,
            name: None,
            reason: format!("invalid YAML merge key: {err}"),
        }];
    }
    let mut out = Vec::new();
    // Lists nest; a worklist rather than recursion keeps deep nesting off the
    // stack. Items are pushed in reverse so they come out in order.
    let mut pending = vec![(value, String::new())];
    while let Some((value, item)) = pending.pop() {
        out.extend(decode_one(value, item, &mut pending));
    }
    out
}

/// The kinds Setpoint reads.
#[derive(Clone, Copy, Debug)]
enum Known {
    Service,
    EndpointSlice,
    Node,
    Pod,
    Namespace,
    NetworkPolicy,
    ServiceCidr,
    ClusterNetworkPolicy,
}

impl Known {
    fn from_kind(kind: &str) -> Option<Known> {
        Some(match kind {
            "Service" => Known::Service,
            "EndpointSlice" => Known::EndpointSlice,
            "Node" => Known::Node,
            "Pod" => Known::Pod,
            "Namespace" => Known::Namespace,
            "NetworkPolicy" => Known::NetworkPolicy,
            "ServiceCIDR" => Known::ServiceCidr,
            "ClusterNetworkPolicy" => Known::ClusterNetworkPolicy,
            _ => return None,
        })
    }

    fn api_version(self) -> &'static str {
        match self {
            Known::Service | Known::Node | Known::Pod | Known::Namespace => "v1",
            Known::EndpointSlice => "discovery.k8s.io/v1",
            Known::NetworkPolicy | Known::ServiceCidr => "networking.k8s.io/v1",
            Known::ClusterNetworkPolicy => cluster_api::API_VERSION,
        }
    }

    fn namespaced(self) -> bool {
        !matches!(
            self,
            Known::Node | Known::Namespace | Known::ServiceCidr | Known::ClusterNetworkPolicy
        )
    }

    fn deserialize(self, value: &Value) -> Result<ClusterObject, String> {
        Ok(match self {
            Known::Service => ClusterObject::Service(typed(value)?),
            Known::EndpointSlice => ClusterObject::EndpointSlice(typed(value)?),
            Known::Node => ClusterObject::Node(typed(value)?),
            Known::Pod => ClusterObject::Pod(typed(value)?),
            Known::Namespace => ClusterObject::Namespace(typed(value)?),
            Known::NetworkPolicy => ClusterObject::NetworkPolicy(typed(value)?),
            Known::ServiceCidr => ClusterObject::ServiceCidr(typed(value)?),
            Known::ClusterNetworkPolicy => ClusterObject::ClusterNetworkPolicy(typed(value)?),
        })
    }
}

/// Decodes one object, or queues the items of a List on `pending`.
fn decode_one(value: Value, item: String, pending: &mut Vec<(Value, String)>) -> Option<Outcome> {
    let skip = |kind: Option<&str>, name: Option<String>, reason: &str| Outcome::Skipped {
        kind: kind.map(str::to_owned),
        name,
        reason: if item.is_empty() {
            reason.to_owned()
        } else {
            format!("{item}: {reason}")
        },
    };
    let mut map = match value {
        Value::Null => return None,
        Value::Mapping(map) => map,
        other => {
            let found = type_name(&other);
            return Some(skip(None, None, &format!("not a mapping but {found}")));
        }
    };
    let kind = match map.get("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Some(skip(None, None, "missing kind"));
        }
        Some(other) => {
            let found = type_name(other);
            return Some(skip(None, None, &format!("kind is {found}, not a string")));
        }
    };

    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        match map.remove("items") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                let dot = if item.is_empty() { "" } else { "." };
                for (i, value) in items.into_iter().enumerate().rev() {
                    pending.push((value, format!("{item}{dot}items[{i}]")));
                }
            }
            Some(other) => {
                let found = type_name(&other);
                return Some(skip(
                    Some(&kind),
                    None,
                    &format!("items is {found}, not a list"),
                ));
            }
        }
        return None;
    }

    let Some(known) = Known::from_kind(&kind) else {
        return Some(Outcome::Ignored { kind });
    };
    let name = shown_name(&map, known);
    let expected = known.api_version();
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == expected => {}
        Some(Value::String(v)) if group(v) != group(expected) => {
            // Another API's kind of the same name (a Knative Service).
            let kind = format!("{kind}.{}", group(v));
            return Some(Outcome::Ignored { kind });
        }
        Some(Value::String(v)) => {
            let reason = format!("unsupported apiVersion {v} for {kind}, expected {expected}");
            return Some(skip(Some(&kind), name, &reason));
        }
        None | Some(Value::Null) => {
            let reason = format!("missing apiVersion, expected {expected}");
            return Some(skip(Some(&kind), name, &reason));
        }
        Some(other) => {
            let reason = format!("apiVersion is {}, expected {expected}", type_name(other));
            return Some(skip(Some(&kind), name, &reason));
        }
    }
    let has_name = metadata(&map, "name").is_some_and(|n| match n {
        Value::String(s) => !s.is_empty(),
        // Wrong types are left to the typed decoder, which names them.
        _ => !n.is_null(),
    });
    if !has_name {
        return Some(skip(Some(&kind), None, "missing metadata.name"));
    }

    Some(match known.deserialize(&Value::Mapping(map)) {
        Ok(mut object) => {
            let meta = meta_mut(&mut object);
            if !known.namespaced() {
                // The API server drops it too.
                meta.namespace = None;
            } else if meta.namespace.as_deref().is_none_or(str::is_empty) {
                meta.namespace = Some("default".to_owned());
            }
            Outcome::Object {
                object: Box::new(object),
                item,
            }
        }
        Err(reason) => skip(Some(&kind), name, &reason),
    })
}

fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    T::deserialize(value).map_err(|err| {
        // Deserializing a Value does not track the field path, deserializing
        // text does: redo it from text to say which field is wrong. The text's
        // line numbers are not the file's, so they are cut off.
        serde_yaml_ng::to_string(value)
            .ok()
            .and_then(|text| serde_yaml_ng::from_str::<T>(&text).err())
            .map_or_else(|| err.to_string(), |err| without_location(&err))
    })
}

fn without_location(err: &serde_yaml_ng::Error) -> String {
    let message = err.to_string();
    let Some(at) = err.location() else {
        return message;
    };
    let suffix = format!(" at line {} column {}", at.line(), at.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_owned(),
        None => message,
    }
}

fn meta_mut(object: &mut ClusterObject) -> &mut ObjectMeta {
    match object {
        ClusterObject::Service(o) => &mut o.metadata,
        ClusterObject::EndpointSlice(o) => &mut o.metadata,
        ClusterObject::Node(o) => &mut o.metadata,
        ClusterObject::Pod(o) => &mut o.metadata,
        ClusterObject::Namespace(o) => &mut o.metadata,
        ClusterObject::NetworkPolicy(o) => &mut o.metadata,
        ClusterObject::ServiceCidr(o) => &mut o.metadata,
        ClusterObject::ClusterNetworkPolicy(o) => &mut o.metadata,
    }
}

fn metadata<'a>(map: &'a Mapping, field: &str) -> Option<&'a Value> {
    map.get("metadata")?.get(field)
}

/// `namespace/name` (namespace defaulted) or `name`, for reports.
fn shown_name(map: &Mapping, known: Known) -> Option<String> {
    let name = metadata(map, "name")?.as_str().filter(|n| !n.is_empty())?;
    if !known.namespaced() {
        return Some(name.to_owned());
    }
    let namespace = metadata(map, "namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    Some(format!("{namespace}/{name}"))
}

/// `discovery.k8s.io` of `discovery.k8s.io/v1`; empty for the core group.
fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
