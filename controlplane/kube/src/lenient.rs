//! A watched object that may fail to decode without failing its list.
//!
//! kube's watcher decodes a whole LIST page as one `ObjectList<K>`: with a
//! plain k8s-openapi `K`, one malformed item fails the page, and the watcher
//! retries the same failing list forever. [`Lenient<K>`] decodes every item
//! on its own and keeps a failure as a value, so the source can skip that
//! object with its reason and keep the others.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;

/// An object of kind `K` as the API server sent it.
#[derive(Clone, Debug)]
pub(crate) enum Lenient<K> {
    Decoded(K),
    /// The object did not decode as `K`. `metadata` holds what could be read
    /// of its name, namespace and resourceVersion (the watcher needs the
    /// last to resume a watch).
    Undecodable {
        metadata: Box<ObjectMeta>,
        reason: String,
    },
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only text that is not JSON at all fails here (and then the page
        // or watch line is unusable anyway).
        let value = Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(object) => Ok(Lenient::Decoded(object)),
            Err(err) => {
                let path = err.path().to_string();
                let inner = err.into_inner();
                let reason = if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                };
                Ok(Lenient::Undecodable {
                    metadata: Box::new(loose_metadata(&value)),
                    reason,
                })
            }
        }
    }
}

/// Name, namespace, uid and resourceVersion, each kept only when it is a
/// string: enough to identify an object whose metadata is itself malformed.
fn loose_metadata(value: &Value) -> ObjectMeta {
    let field = |name: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ObjectMeta {
        name: field("name"),
        namespace: field("namespace"),
        uid: field("uid"),
        resource_version: field("resourceVersion"),
        ..ObjectMeta::default()
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Lenient::Decoded(object) => object.meta(),
            Lenient::Undecodable { metadata, .. } => metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Lenient::Decoded(object) => object.meta_mut(),
            Lenient::Undecodable { metadata, .. } => metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    #[test]
    fn names_the_bad_field_and_keeps_identity() {
        let text = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
            "metadata":{"name":"web-1","namespace":"shop","resourceVersion":"7"},
            "addressType":"IPv4","endpoints":"oops"}"#;
        let Ok(Lenient::<EndpointSlice>::Undecodable { metadata, reason }) =
            serde_json::from_str(text)
        else {
            panic!("expected an undecodable slice");
        };
        assert_eq!(metadata.name.as_deref(), Some("web-1"));
        assert_eq!(metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(metadata.resource_version.as_deref(), Some("7"));
        assert!(reason.starts_with("endpoints: invalid type"), "{reason}");
    }

    #[test]
    fn decodes_a_good_object() {
        let text = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
            "metadata":{"name":"web-1","namespace":"shop"},"addressType":"IPv4","endpoints":[]}"#;
        let decoded: Lenient<EndpointSlice> = serde_json::from_str(text).unwrap();
        assert!(matches!(decoded, Lenient::Decoded(_)));
    }
}
