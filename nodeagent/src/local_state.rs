//! What the agent last applied, kept on disk so that a restarted agent
//! resumes without re-applying (after checking the kernel still matches).
//! Written to a temporary file, synced, then renamed over the old one: a
//! crash leaves the old record or the new one, never half of either.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use setpoint_dataplane::{Digest, NodeDataplane};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub node: String,
    pub revision: u64,
    pub digest: Digest,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalStateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is over {limit} bytes; not read")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} is not a valid applied-state record: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub struct LocalState {
    dir: PathBuf,
}

/// Largest record file read: a record is a node name, two numbers and a
/// digest.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// Largest state file read: no larger than a state the agent can be sent.
const MAX_STATE_BYTES: u64 = setpoint_proto::MAX_REASSEMBLED_BYTES as u64;

/// The text of `path`, `None` when it does not exist; an error when it is
/// over `limit` bytes, before they are read.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<String>, LocalStateError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LocalStateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|source| LocalStateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > limit {
        return Err(LocalStateError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(Some(text))
}

impl LocalState {
    const FILE: &'static str = "applied.json";
    const STATE_FILE: &'static str = "state.json";

    pub fn new(dir: impl Into<PathBuf>) -> LocalState {
        LocalState { dir: dir.into() }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(Self::FILE)
    }

    /// The last record, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Applied>, LocalStateError> {
        let path = self.path();
        let Some(text) = read_bounded(&path, MAX_RECORD_BYTES)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LocalStateError::Corrupt { path, source })
    }

    /// The full state last applied, kept beside the record so a restarted
    /// agent can take deltas against it.
    pub fn load_state(&self) -> Result<Option<NodeDataplane>, LocalStateError> {
        let path = self.dir.join(Self::STATE_FILE);
        let Some(text) = read_bounded(&path, MAX_STATE_BYTES)? else {
            return Ok(None);
        };
        if text.starts_with("{\"parts\"") {
            let cache = setpoint_proto::parts::FragmentCache::process();
            return setpoint_proto::parts::decode_state(text.as_bytes(), None, cache)
                .map(Some)
                .map_err(|e| LocalStateError::Corrupt {
                    path,
                    source: serde::de::Error::custom(e),
                });
        }
        // An older agent's record: the state as one part.
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LocalStateError::Corrupt { path, source })
    }

    /// Writes the state, then the record naming it: a record is only
    /// ever next to the state it describes.
    pub fn save_with_state(
        &self,
        applied: &Applied,
        state: &NodeDataplane,
    ) -> Result<(), LocalStateError> {
        // By part, as the control plane sends it: deltas name the parts
        // they start from.
        let text =
            setpoint_proto::parts::encode_state(state).map_err(|e| LocalStateError::Write {
                path: self.dir.join(Self::STATE_FILE),
                source: std::io::Error::other(e),
            })?;
        self.write_atomically(Self::STATE_FILE, &text)?;
        self.save(applied)
    }

    pub fn save(&self, applied: &Applied) -> Result<(), LocalStateError> {
        let text = serde_json::to_vec_pretty(applied).map_err(|e| LocalStateError::Write {
            path: self.path(),
            source: std::io::Error::other(e),
        })?;
        self.write_atomically(Self::FILE, &text)
    }

    fn write_atomically(&self, name: &str, text: &[u8]) -> Result<(), LocalStateError> {
        let path = self.dir.join(name);
        let write_err = |source| LocalStateError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(write_err)?;
        // A name of its own: a write still finishing for an agent that was
        // replaced must not interleave with its successor's.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
        file.write_all(text).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        // The rename itself is durable only once the directory is synced.
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(revision: u64) -> Applied {
        let digest = setpoint_dataplane::NodeDataplane::default().digest();
        Applied {
            node: "node-a".into(),
            revision,
            digest,
            applied_at: 1_700_000_000,
        }
    }

    #[test]
    fn saves_loads_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = LocalState::new(dir.path().join("nested"));
        assert_eq!(state.load().expect("empty"), None);
        state.save(&record(1)).expect("save");
        state.save(&record(2)).expect("save again");
        assert_eq!(state.load().expect("load"), Some(record(2)));
        let names: Vec<_> = std::fs::read_dir(state.dir())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["applied.json"], "no temporary left behind");
        let state = setpoint_dataplane::NodeDataplane::default();
        let applied = LocalState::new(dir.path().join("with-state"));
        assert_eq!(applied.load_state().expect("none yet"), None);
        applied.save_with_state(&record(3), &state).expect("save");
        assert_eq!(applied.load_state().expect("load"), Some(state));
        assert_eq!(applied.load().expect("load"), Some(record(3)));
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("applied.json"), "{\"node\": 3").expect("write");
        let err = LocalState::new(dir.path()).load().expect_err("corrupt");
        assert!(err.to_string().contains("applied.json"), "{err}");
    }

    #[test]
    fn an_oversized_record_is_refused_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = format!(
            "{{\"node\": \"{}\"}}",
            "x".repeat(MAX_RECORD_BYTES as usize)
        );
        std::fs::write(dir.path().join("applied.json"), big).expect("write");
        let err = LocalState::new(dir.path()).load().expect_err("too large");
        assert!(matches!(err, LocalStateError::TooLarge { .. }), "{err}");
    }

    fn contents() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let json = prop_oneof![
            Just("{\"parts\"".to_string()),
            Just("{\"parts\":[{\"name\":\"base\",\"digest\":\"".to_string()),
            Just("{\"node\":\"n\",\"revision\":".to_string()),
            Just(String::new()),
        ];
        (json, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(head, tail)| {
            let mut bytes = head.into_bytes();
            bytes.extend(tail);
            bytes
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the files hold, loading is a record, nothing, or an
        /// error naming the file — never a panic.
        #[test]
        fn arbitrary_files_never_panic(record in contents(), state in contents()) {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("applied.json"), &record).expect("write");
            std::fs::write(dir.path().join("state.json"), &state).expect("write");
            let local = LocalState::new(dir.path());
            if let Err(e) = local.load() {
                proptest::prop_assert!(e.to_string().contains("applied.json"), "{}", e);
            }
            if let Err(e) = local.load_state() {
                proptest::prop_assert!(e.to_string().contains("state.json"), "{}", e);
            }
        }
    }
}
