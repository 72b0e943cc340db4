//! What a load produced: the objects, and everything it left out.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use setpoint_compute::ClusterObject;

/// The result of reading manifests. Per-object problems land here rather
/// than failing the load; the caller decides how loud to be about them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Objects of the kinds Setpoint reads, one per `ObjectKey`, in the order
    /// their key was first seen (files sorted by path, documents in file
    /// order). Namespaced objects always carry a namespace (`default` when
    /// the manifest had none); cluster-scoped ones never do.
    pub objects: Vec<ClusterObject>,
    /// Documents and objects that could not be read, in input order.
    pub skipped: Vec<Skipped>,
    /// Well-formed objects of kinds Setpoint does not read, counted by kind
    /// (`Deployment`). A kind Setpoint reads but from another API group is
    /// counted as `Kind.group` (`Service.serving.knative.dev`).
    pub ignored_kinds: BTreeMap<String, usize>,
    /// Things that loaded but deserve a look, such as a duplicate object
    /// replacing an earlier one.
    pub warnings: Vec<String>,
}

/// One document or object that was left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The file it came from (as given, or as found under the loaded directory).
    pub file: PathBuf,
    /// 1-based index of the YAML/JSON document within the file; 0 when the
    /// whole file was unusable (not UTF-8).
    pub document: usize,
    /// `kind`, when the document had one.
    pub kind: Option<String>,
    /// `metadata.name`, as `namespace/name` for namespaced objects.
    pub name: Option<String>,
    /// Why it was skipped; starts with `items[i]: ` for an item of a List.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, " doc {}", self.document)?;
        }
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name})")?,
            (Some(kind), None) => write!(f, " ({kind})")?,
            (None, Some(name)) => write!(f, " ({name})")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.reason)
    }
}

/// A load that could not happen at all. Anything wrong inside a readable
/// file is a [`Skipped`] entry instead.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory that is missing or cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
