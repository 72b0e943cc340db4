//! What the agent last applied, kept on disk so that a restarted agent
//! resumes without re-applying (after checking the kernel still matches).
//!
//! The record is a journal, `state.journal`: a magic line, then frames,
//! each `[payload length, u32 LE][SHA-256 of the payload][payload]`. The
//! first frame is the base: a whole state and the record naming it. Each
//! later frame is one revision: its record and, per part that changed, the
//! diff from the state the frame before recorded (the wire delta's
//! encoding), so recording a one-endpoint change writes a few hundred
//! bytes instead of re-encoding megabytes. Once the frames after the base
//! outgrow a quarter of it, the next record starts a new journal whose
//! base is the state recorded: written to a temporary file, synced, then
//! renamed over the old one, so a crash leaves the old journal or the new
//! one, never half of either.
//!
//! Reading takes frames while each is whole, its checksum matches, and it
//! applies to the state before it and yields the digest its record names;
//! the first that does not ends the journal (a torn tail from a crash
//! mid-append, or damage). What comes back is always a state some frame
//! recorded, with that frame's record, never a blend.
//!
//! `applied.json` beside it holds the newest record alone, for whoever only
//! asks which revision was recorded (it is never trusted over the journal).
//! An older agent's `state.json` beside `applied.json` is read when there is
//! no journal; an older agent finding a journal finds no `state.json` and
//! asks for a snapshot.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use setpoint_dataplane::{Digest, Fragment, NodeDataplane};
use setpoint_proto::parts::{DIFF_PARTS_ENCODING, FragmentCache};
use sha2::Digest as _;

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
    #[error("{path} is not a valid journal: {reason}")]
    BadJournal { path: PathBuf, reason: String },
}

#[derive(Clone, Debug)]
pub struct LocalState {
    dir: PathBuf,
}

/// Largest record file read: a record is a node name, two numbers and a
/// digest.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// Largest state file read: no larger than a state the agent can be sent.
const MAX_STATE_BYTES: u64 = setpoint_proto::MAX_REASSEMBLED_BYTES as u64;

/// The journal's first bytes: what tells it from anything else.
const MAGIC: &[u8] = b"setpoint state journal v1\n";
/// A frame's payload length and its SHA-256.
const FRAME_HEAD: usize = 4 + 32;
/// A base frame's payload starts with this kind byte, a revision's with
/// [`REVISION`].
const BASE: u8 = b'B';
const REVISION: u8 = b'R';

/// The text of `path`, `None` when it does not exist; an error when it is
/// over `limit` bytes, before they are read.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<String>, LocalStateError> {
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

/// `payload` framed: its length, its checksum, itself.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEAD + payload.len());
    // Payloads are bounded by MAX_STATE_BYTES (1 GiB), well within u32.
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&sha2::Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// A frame's payload: its kind, the record (JSON, length first), the body.
fn payload(kind: u8, applied: &Applied, body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let record = serde_json::to_vec(applied)?;
    let mut out = Vec::with_capacity(1 + 4 + record.len() + body.len());
    out.push(kind);
    out.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&record);
    out.extend_from_slice(body);
    Ok(out)
}

/// A payload's kind, record and body; `None` when it is not one.
fn split_payload(payload: &[u8]) -> Option<(u8, Applied, &[u8])> {
    let (&kind, rest) = payload.split_first()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if len > rest.len() {
        return None;
    }
    let (record, body) = rest.split_at(len);
    Some((kind, serde_json::from_slice(record).ok()?, body))
}

/// Reads the journal's frames one at a time.
struct Frames {
    file: std::io::BufReader<std::fs::File>,
    left: u64,
}

impl Frames {
    /// The next whole frame's payload with a matching checksum; `None` at
    /// the end or at the first frame that is torn or damaged.
    fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut head = [0u8; FRAME_HEAD];
        if self.left < FRAME_HEAD as u64 {
            return Ok(None);
        }
        self.file.read_exact(&mut head)?;
        self.left -= FRAME_HEAD as u64;
        let (len, sum) = head.split_at(4);
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(len);
        let len = u64::from(u32::from_le_bytes(len_bytes));
        // A length past the file's end is a torn frame (or a damaged
        // length): nothing is allocated for it.
        if len > self.left || len > MAX_STATE_BYTES {
            return Ok(None);
        }
        let mut payload = vec![0u8; len as usize];
        self.file.read_exact(&mut payload)?;
        self.left -= len;
        if sha2::Sha256::digest(&payload).as_slice() != sum {
            return Ok(None);
        }
        Ok(Some(payload))
    }
}

impl LocalState {
    const FILE: &'static str = "applied.json";
    /// An older agent's whole-state record.
    const STATE_FILE: &'static str = "state.json";
    const JOURNAL: &'static str = "state.journal";

    pub fn new(dir: impl Into<PathBuf>) -> LocalState {
        LocalState { dir: dir.into() }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(Self::FILE)
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(Self::JOURNAL)
    }

    /// The newest record written, `None` when there is none yet. Cheap,
    /// for whoever waits for a revision to be recorded; a restart takes
    /// [`LocalState::load_recorded`], which a crash cannot leave behind.
    pub fn load(&self) -> Result<Option<Applied>, LocalStateError> {
        let path = self.path();
        let Some(text) = read_bounded(&path, MAX_RECORD_BYTES)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LocalStateError::Corrupt { path, source })
    }

    /// The full state last recorded, kept so a restarted agent can take
    /// deltas against it.
    pub fn load_state(&self) -> Result<Option<NodeDataplane>, LocalStateError> {
        Ok(self.load_recorded()?.map(|(_, state)| state))
    }

    /// The last state recorded and its record: the journal's last good
    /// frame, or an older agent's `state.json` beside `applied.json`
    /// (whose digests the caller compares: those two were written apart).
    pub fn load_recorded(&self) -> Result<Option<(Applied, NodeDataplane)>, LocalStateError> {
        let path = self.journal_path();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.load_older(),
            Err(source) => return Err(LocalStateError::Read { path, source }),
        };
        self.read_journal(&path, file)
    }

    /// An older agent's record: `applied.json` and `state.json`.
    fn load_older(&self) -> Result<Option<(Applied, NodeDataplane)>, LocalStateError> {
        let (Some(applied), Some(state)) = (self.load()?, self.load_older_state()?) else {
            return Ok(None);
        };
        Ok(Some((applied, state)))
    }

    fn load_older_state(&self) -> Result<Option<NodeDataplane>, LocalStateError> {
        let path = self.dir.join(Self::STATE_FILE);
        let Some(text) = read_bounded(&path, MAX_STATE_BYTES)? else {
            return Ok(None);
        };
        if text.starts_with("{\"parts\"") {
            let cache = FragmentCache::process();
            return setpoint_proto::parts::decode_state(text.as_bytes(), None, cache)
                .map(Some)
                .map_err(|e| LocalStateError::Corrupt {
                    path,
                    source: serde::de::Error::custom(e),
                });
        }
        // An even older agent's record: the state as one part.
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LocalStateError::Corrupt { path, source })
    }

    fn read_journal(
        &self,
        path: &Path,
        file: std::fs::File,
    ) -> Result<Option<(Applied, NodeDataplane)>, LocalStateError> {
        let read_err = |source| LocalStateError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| LocalStateError::BadJournal {
            path: path.to_path_buf(),
            reason,
        };
        let len = file.metadata().map_err(read_err)?.len();
        let mut frames = Frames {
            file: std::io::BufReader::new(file),
            left: len,
        };
        let mut magic = [0u8; MAGIC.len()];
        if len < MAGIC.len() as u64 {
            return Err(bad("shorter than its header".into()));
        }
        frames.file.read_exact(&mut magic).map_err(read_err)?;
        frames.left -= MAGIC.len() as u64;
        if magic != MAGIC {
            return Err(bad("not a Setpoint state journal".into()));
        }
        let cache = FragmentCache::process();
        let base = frames
            .next()
            .map_err(read_err)?
            .ok_or_else(|| bad("its base is torn or damaged".into()))?;
        let (applied, state) = match split_payload(&base) {
            Some((BASE, applied, body)) => {
                let state = setpoint_proto::parts::decode_state(body, Some(applied.digest), cache)
                    .map_err(|e| bad(format!("its base: {e}")))?;
                (applied, state)
            }
            _ => return Err(bad("its first frame is not a base".into())),
        };
        drop(base);
        let mut last = (applied, state);
        // A frame that fails to read, decode or apply ends the journal:
        // everything before it was checked, nothing after it is trusted.
        while let Ok(Some(payload)) = frames.next() {
            let Some((REVISION, applied, changes)) = split_payload(&payload) else {
                break;
            };
            let delta = setpoint_proto::v1::Delta {
                from_revision: last.0.revision,
                to_revision: applied.revision,
                digest: setpoint_proto::digest_bytes(&applied.digest),
                changes: changes.to_vec(),
                encoding: DIFF_PARTS_ENCODING.to_string(),
            };
            match setpoint_proto::parts::apply_delta(&last.1, &delta, cache) {
                Ok(next) => last = (applied, next),
                Err(e) => {
                    tracing::warn!(
                        "{}: a frame after revision {} does not apply ({e}); the journal ends there",
                        path.display(),
                        last.0.revision
                    );
                    break;
                }
            }
        }
        Ok(Some(last))
    }

    /// Records `state` as applied with `applied`, whole: a new journal
    /// with `state` as its base. [`Journal`] appends when it can.
    pub fn save_with_state(
        &self,
        applied: &Applied,
        state: &NodeDataplane,
    ) -> Result<(), LocalStateError> {
        Journal::new(self.clone()).write_base(applied, state)?;
        Ok(())
    }

    /// Writes `applied.json` alone, synced.
    pub fn save(&self, applied: &Applied) -> Result<(), LocalStateError> {
        self.write_record(applied, true)
    }

    fn write_record(&self, applied: &Applied, durable: bool) -> Result<(), LocalStateError> {
        let text = serde_json::to_vec_pretty(applied).map_err(|e| LocalStateError::Write {
            path: self.path(),
            source: std::io::Error::other(e),
        })?;
        self.write_atomically(Self::FILE, &text, durable)
            .map(|_| ())
    }

    /// Writes `name` whole through a temporary file renamed over it, synced
    /// (file and directory) when `durable`; the file, open for appending.
    fn write_atomically(
        &self,
        name: &str,
        text: &[u8],
        durable: bool,
    ) -> Result<std::fs::File, LocalStateError> {
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
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(write_err)?;
        let written = file
            .write_all(text)
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        // The rename itself is durable only once the directory is synced.
        if durable && let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(file)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// When a journal is rewritten with a new base: once the frames after the
/// base would pass `base / divisor` bytes, or `floor` for a small base.
#[derive(Clone, Copy, Debug)]
pub struct Compaction {
    pub divisor: u64,
    pub floor: u64,
}

impl Default for Compaction {
    /// A quarter of the base (a 10,000-Service state's 4.8 MiB base takes
    /// over a thousand one-endpoint frames before it is rewritten; a
    /// restart replays at most that quarter), at least 64 KiB.
    fn default() -> Self {
        Compaction {
            divisor: 4,
            floor: 64 * 1024,
        }
    }
}

/// What one record wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// A new journal whose base is the whole state, of this many bytes.
    Base(u64),
    /// One frame of this many bytes appended.
    Frame(u64),
}

/// The writer of a state directory's journal: appends each state as the
/// diff from the one recorded before it, and starts a new journal when
/// the frames outgrow the base, or when it holds no journal it wrote
/// itself (the first record, or after a failed write: a torn frame ends
/// a journal for readers, so nothing is ever appended after one).
pub struct Journal {
    local: LocalState,
    compaction: Compaction,
    open: Option<Open>,
}

/// The journal this writer wrote and still appends to: the file (by
/// handle, so an agent replaced in the same process appends to its own
/// journal, never to its successor's) and what its last frame records.
struct Open {
    file: std::fs::File,
    last: Applied,
    state: NodeDataplane,
    base_bytes: u64,
    tail_bytes: u64,
}

impl Journal {
    pub fn new(local: LocalState) -> Journal {
        Journal::with_compaction(local, Compaction::default())
    }

    pub fn with_compaction(local: LocalState, compaction: Compaction) -> Journal {
        Journal {
            local,
            compaction,
            open: None,
        }
    }

    /// Records `state` as applied with `applied`; `applied.json` follows.
    pub fn record(
        &mut self,
        applied: &Applied,
        state: &NodeDataplane,
    ) -> Result<Written, LocalStateError> {
        let written = match self.open.take() {
            Some(open) => match self.append(open, applied, state)? {
                Some(bytes) => Written::Frame(bytes),
                None => self.write_base(applied, state)?,
            },
            None => self.write_base(applied, state)?,
        };
        // Advisory (see the module doc): not synced.
        self.local.write_record(applied, false)?;
        Ok(written)
    }

    /// Appends `state`'s frame to `open`, keeping it open; `None` when the
    /// journal should start over instead (too long, or the append failed:
    /// the base written next supersedes whatever part of it landed).
    fn append(
        &mut self,
        mut open: Open,
        applied: &Applied,
        state: &NodeDataplane,
    ) -> Result<Option<u64>, LocalStateError> {
        let path = self.local.journal_path();
        let Some(changes) = part_diffs(&open.last, &open.state, applied, state) else {
            return Ok(None);
        };
        let payload = payload(REVISION, applied, &changes).map_err(|e| LocalStateError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let framed = frame(&payload);
        let limit = (open.base_bytes / self.compaction.divisor.max(1)).max(self.compaction.floor);
        let bytes = framed.len() as u64;
        if open.tail_bytes + bytes > limit {
            return Ok(None);
        }
        if let Err(e) = open
            .file
            .write_all(&framed)
            .and_then(|()| open.file.sync_data())
        {
            tracing::warn!(
                "cannot append to {}: {e}; writing the whole state instead",
                path.display()
            );
            return Ok(None);
        }
        open.tail_bytes += bytes;
        open.last = applied.clone();
        open.state = state.clone();
        self.open = Some(open);
        Ok(Some(bytes))
    }

    /// A new journal holding `state` as its base, synced and renamed into
    /// place; an older agent's `state.json` removed after it.
    fn write_base(
        &mut self,
        applied: &Applied,
        state: &NodeDataplane,
    ) -> Result<Written, LocalStateError> {
        self.open = None;
        let path = self.local.journal_path();
        let write_err = |source| LocalStateError::Write {
            path: path.clone(),
            source,
        };
        // By part, as the control plane sends it: frames name the parts
        // they start from.
        let body = setpoint_proto::parts::encode_state(state)
            .map_err(|e| write_err(std::io::Error::other(e)))?;
        let payload =
            payload(BASE, applied, &body).map_err(|e| write_err(std::io::Error::other(e)))?;
        drop(body);
        let mut text = Vec::with_capacity(MAGIC.len() + FRAME_HEAD + payload.len());
        text.extend_from_slice(MAGIC);
        text.extend_from_slice(&frame(&payload));
        drop(payload);
        let file = self
            .local
            .write_atomically(LocalState::JOURNAL, &text, true)?;
        let bytes = text.len() as u64;
        drop(text);
        match std::fs::remove_file(self.local.dir.join(LocalState::STATE_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove the older agent's state.json: {e}"),
        }
        self.open = Some(Open {
            file,
            last: applied.clone(),
            state: state.clone(),
            base_bytes: bytes,
            tail_bytes: 0,
        });
        Ok(Written::Base(bytes))
    }
}

/// The changes from `from` to `to` by part, as a delta carries them; `None`
/// when they cannot be encoded (the journal then starts over).
fn part_diffs(
    last: &Applied,
    from: &NodeDataplane,
    applied: &Applied,
    to: &NodeDataplane,
) -> Option<Vec<u8>> {
    let empty = Fragment::new();
    let mut names: Vec<&String> = from.parts().map(|(n, _)| n).collect();
    names.extend(to.parts().map(|(n, _)| n));
    names.sort();
    names.dedup();
    let mut parts = Vec::new();
    for name in names {
        let (a, b) = (from.part(name), to.part(name));
        let digests = (a.map(|f| f.digest()), b.map(|f| f.digest()));
        if digests.0 == digests.1 {
            continue;
        }
        let diff = setpoint_dataplane::diff::diff_fragments(
            a.map_or(&empty, |f| f.as_ref()),
            b.map_or(&empty, |f| f.as_ref()),
        );
        parts
            .push(setpoint_proto::parts::encode_part_diff(name, digests.0, digests.1, &diff).ok()?);
    }
    let delta = setpoint_proto::parts::delta_of_parts(
        last.revision,
        applied.revision,
        &applied.digest,
        &parts,
    );
    Some(delta.changes)
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn saves_loads_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = LocalState::new(dir.path().join("nested"));
        assert_eq!(state.load().expect("empty"), None);
        state.save(&record(1)).expect("save");
        state.save(&record(2)).expect("save again");
        assert_eq!(state.load().expect("load"), Some(record(2)));
        assert_eq!(
            names(state.dir()),
            vec!["applied.json"],
            "no temporary left behind"
        );
        let state = setpoint_dataplane::NodeDataplane::default();
        let applied = LocalState::new(dir.path().join("with-state"));
        assert_eq!(applied.load_state().expect("none yet"), None);
        applied.save_with_state(&record(3), &state).expect("save");
        assert_eq!(applied.load_state().expect("load"), Some(state.clone()));
        assert_eq!(
            applied.load_recorded().expect("load"),
            Some((record(3), state))
        );
        assert_eq!(names(applied.dir()), vec!["state.journal"]);
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

    /// An older agent's files (the whole state in `state.json`, its record
    /// in `applied.json`) are read until the first journal replaces them.
    #[test]
    fn an_older_agents_record_is_read_then_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = LocalState::new(dir.path());
        let old = crate::apply::tests::state(&["10.0.0.1"]);
        let applied = Applied {
            digest: old.digest(),
            ..record(4)
        };
        let text = setpoint_proto::parts::encode_state(&old).expect("encode");
        std::fs::write(dir.path().join("state.json"), text).expect("write");
        local.save(&applied).expect("save");
        assert_eq!(
            local.load_recorded().expect("older record"),
            Some((applied.clone(), old))
        );
        let new = crate::apply::tests::state(&["10.0.0.2"]);
        let next = Applied {
            digest: new.digest(),
            ..record(5)
        };
        Journal::new(local.clone())
            .record(&next, &new)
            .expect("record");
        assert_eq!(names(local.dir()), vec!["applied.json", "state.journal"]);
        assert_eq!(local.load_recorded().expect("journal"), Some((next, new)));
    }

    /// A part holding one set of `ips`, named after the part so that parts
    /// stay disjoint.
    fn part(p: u8, ips: impl IntoIterator<Item = u16>) -> Fragment {
        use setpoint_dataplane::{Family, SetEntry, SetSpec, SetType};
        let mut f = Fragment::new();
        let name = format!("SP-TEST-{p}");
        f.put_set(
            name.clone(),
            SetSpec {
                kind: SetType::HashIp,
                family: Family::Inet,
                maxelem: 1024,
                comment: String::new(),
            },
        );
        for i in ips {
            let entry: SetEntry = format!("10.{p}.{}.{}", i >> 8, i & 0xff)
                .parse()
                .expect("an address");
            f.add_entry(&name, entry);
        }
        f
    }

    /// Sequences of states of up to three parts, so that parts come, go
    /// and change between records.
    fn states() -> impl proptest::strategy::Strategy<Value = Vec<NodeDataplane>> {
        let ips = proptest::collection::btree_set(0u8..12, 0..6);
        use proptest::strategy::Strategy as _;
        let state = proptest::collection::btree_map(0u8..3, ips, 0..3).prop_map(|parts| {
            NodeDataplane::from_parts(parts.iter().map(|(p, ips)| {
                let ips = ips.iter().map(|i| u16::from(*i));
                (format!("part-{p}"), std::sync::Arc::new(part(*p, ips)))
            }))
        });
        proptest::collection::vec(state, 1..12)
    }

    /// Each state's record, revisions 1, 2, ….
    fn records(states: &[NodeDataplane]) -> Vec<Applied> {
        (1u64..)
            .zip(states)
            .map(|(revision, s)| Applied {
                node: "node-a".into(),
                revision,
                digest: s.digest(),
                applied_at: 1_700_000_000 + revision,
            })
            .collect()
    }

    /// Records every state with a small compaction threshold; each write's
    /// kind and the journal's length after it.
    fn record_all(local: &LocalState, states: &[NodeDataplane], floor: u64) -> Vec<(Written, u64)> {
        let mut journal = Journal::with_compaction(local.clone(), Compaction { divisor: 4, floor });
        records(states)
            .iter()
            .zip(states)
            .map(|(applied, s)| {
                let written = journal.record(applied, s).expect("record");
                let len = std::fs::metadata(local.journal_path())
                    .expect("journal")
                    .len();
                (written, len)
            })
            .collect()
    }

    /// Frames are appended until they would pass a quarter of the base;
    /// then the next record is a new base, and the journal shrinks back.
    #[test]
    fn the_journal_starts_over_once_its_frames_outgrow_the_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = LocalState::new(dir.path());
        // A large base, then one entry back and another out each time.
        let whole = part(0, 0..5_000u16);
        let states: Vec<NodeDataplane> = (0..400u16)
            .map(|k| {
                let mut f = whole.clone();
                let out = format!("10.0.{}.{}", k >> 8, k & 0xff);
                f.remove_entry("SP-TEST-0", &out.parse().expect("an address"));
                NodeDataplane::from_parts([("part-0", std::sync::Arc::new(f))])
            })
            .collect();
        let written = record_all(&local, &states, 0);
        let Written::Base(base) = written[0].0 else {
            panic!("the first record is a base: {:?}", written[0]);
        };
        let bases: Vec<usize> = written
            .iter()
            .enumerate()
            .filter(|(_, (w, _))| matches!(w, Written::Base(_)))
            .map(|(k, _)| k)
            .collect();
        assert!(bases.len() >= 3, "started over at {bases:?}");
        for (w, len) in &written {
            if let Written::Frame(bytes) = w {
                assert!(
                    *bytes < base / 8,
                    "a two-entry frame of {bytes} bytes, base {base}"
                );
            }
            assert!(*len <= base + base / 4 + 100, "journal of {len} bytes");
        }
        let last = records(&states).pop().expect("states");
        assert_eq!(
            local.load_recorded().expect("load"),
            Some((last, states[399].clone()))
        );
    }

    fn contents() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let json = prop_oneof![
            Just("{\"parts\"".to_string()),
            Just("{\"parts\":[{\"name\":\"base\",\"digest\":\"".to_string()),
            Just("{\"node\":\"n\",\"revision\":".to_string()),
            Just(String::from_utf8_lossy(MAGIC).into_owned()),
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
        fn arbitrary_files_never_panic(
            record in contents(),
            state in contents(),
            journal in proptest::option::of(contents()),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("applied.json"), &record).expect("write");
            std::fs::write(dir.path().join("state.json"), &state).expect("write");
            if let Some(journal) = &journal {
                std::fs::write(dir.path().join("state.journal"), journal).expect("write");
            }
            let local = LocalState::new(dir.path());
            if let Err(e) = local.load() {
                proptest::prop_assert!(e.to_string().contains("applied.json"), "{}", e);
            }
            match local.load_recorded() {
                Err(e) if journal.is_some() => {
                    proptest::prop_assert!(e.to_string().contains("state.journal"), "{}", e)
                }
                Err(e) => proptest::prop_assert!(
                    e.to_string().contains("state.json") || e.to_string().contains("applied.json"),
                    "{}", e
                ),
                Ok(_) => {}
            }
        }

        /// Any sequence of states, however the journal was compacted along
        /// the way: loading gives the last state with its record.
        #[test]
        fn the_last_state_recorded_is_loaded(states in states(), floor in 0u64..2_000) {
            let dir = tempfile::tempdir().expect("tempdir");
            let local = LocalState::new(dir.path());
            record_all(&local, &states, floor);
            let applied = records(&states).pop().expect("one state at least");
            let state = states.last().cloned().expect("one state at least");
            proptest::prop_assert_eq!(local.load().expect("load"), Some(applied.clone()));
            proptest::prop_assert_eq!(local.load_recorded().expect("load"), Some((applied, state)));
        }

        /// A journal cut anywhere (a crash mid-append) or with any byte
        /// changed (damage) loads as the last state whose frame lies whole
        /// before the cut or the damage — or as nothing when the base is
        /// hit — never as another state.
        #[test]
        fn a_torn_or_damaged_journal_loads_the_last_good_state(
            states in states(),
            at in 0.0f64..1.0,
            flip in proptest::option::of(1u8..=255),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let local = LocalState::new(dir.path());
            // No compaction: every frame after the first base stays.
            let written = record_all(&local, &states, u64::MAX);
            proptest::prop_assert!(
                written.iter().skip(1).all(|(w, _)| matches!(w, Written::Frame(_))),
                "{:?}", written
            );
            let path = local.journal_path();
            let mut bytes = std::fs::read(&path).expect("journal");
            let cut = ((bytes.len() as f64) * at) as usize;
            // The first byte changed or cut off.
            let first_bad = if flip.is_some() { cut.min(bytes.len() - 1) } else { cut };
            match flip {
                Some(x) => bytes[first_bad] ^= x,
                None => bytes.truncate(cut),
            }
            std::fs::write(&path, &bytes).expect("write");
            // The last frame whole before it.
            let good = written.iter().rposition(|(_, end)| *end as usize <= first_bad);
            let loaded = local.load_recorded();
            match good {
                Some(k) => {
                    let applied = records(&states)[k].clone();
                    proptest::prop_assert_eq!(
                        loaded.expect("a good base"),
                        Some((applied, states[k].clone()))
                    );
                }
                None => proptest::prop_assert!(
                    !matches!(loaded, Ok(Some(_))),
                    "the base is damaged, yet {:?}", loaded
                ),
            }
        }
    }
}
