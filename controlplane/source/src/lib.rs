//! Sources of cluster objects. For now: Kubernetes manifests on disk.
//!
//! ```text
//!  path ──► files (*.yaml, *.yml, *.json; sorted) ──► documents ──► objects
//!                                                        │            │
//!               syntax errors, bad objects ──────────────┴──► LoadReport.skipped
//!               other kinds ─────────────────────────────────► LoadReport.ignored_kinds
//!               duplicates (last wins) ──────────────────────► LoadReport.warnings
//! ```
//!
//! Only an unreadable path fails a load ([`SourceError`]); anything wrong
//! inside a file skips that document or object and is reported in the
//! [`LoadReport`]. Objects are not validated beyond deserializing: that is
//! the index's job.
//!
//! What a file may cost is bounded by [`Limits`]: a file over
//! [`Limits::max_file_bytes`] is skipped unread, a document nested deeper
//! than [`Limits::max_depth`] or holding a YAML alias is refused before any
//! tree is built (so a "billion laughs" file costs what its text costs).

mod documents;
mod objects;
mod report;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use setpoint_compute::{ClusterObject, ObjectKey, ObjectMap, SharedObject};

pub use report::{LoadReport, Skipped, SourceError};
pub use watch::{Look, ManifestWatch};

/// Bounds on what one manifest file may cost to read. Exceeding one skips
/// that file or document with a [`Skipped`] entry naming the limit; other
/// documents and files still load.
///
/// YAML aliases (`*name`, and so `<<: *name` merges) are always refused:
/// Kubernetes manifests do not need them, and expanding them is how a small
/// file becomes a large tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest file read, in bytes; a larger file is not read at all.
    /// Default [`Limits::DEFAULT_MAX_FILE_MIB`] MiB.
    pub max_file_bytes: u64,
    /// Deepest nesting of mappings and sequences (a document's top-level
    /// mapping is depth 1; a List's item's fields are depth 3). Default
    /// [`Limits::DEFAULT_MAX_DEPTH`].
    pub max_depth: usize,
}

impl Limits {
    /// 16 MiB: ten thousand Services in one file take about 3 MiB.
    pub const DEFAULT_MAX_FILE_MIB: u64 = 16;
    /// 64: the deepest Kubernetes objects (managedFields of a Pod inside a
    /// List) nest about 16 deep.
    pub const DEFAULT_MAX_DEPTH: usize = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: Limits::DEFAULT_MAX_FILE_MIB << 20,
            max_depth: Limits::DEFAULT_MAX_DEPTH,
        }
    }
}

/// Loads every object under `path`: one file, or every `*.yaml`, `*.yml`
/// and `*.json` file below a directory, in sorted path order. Entries whose
/// name starts with `.` are not descended into (`.git`, and the `..data`
/// links of a mounted ConfigMap). A file given directly is read whatever its
/// name; `.json` files are read as JSON, others as YAML.
///
/// When two documents define the same kind/namespace/name, the later one
/// (in sorted file order, then document order) wins, with a warning.
///
/// Reads within the default [`Limits`].
pub fn load_path(path: &Path) -> Result<LoadReport, SourceError> {
    load_path_with(path, &Limits::default())
}

/// [`load_path`] within `limits`.
pub fn load_path_with(path: &Path, limits: &Limits) -> Result<LoadReport, SourceError> {
    let files = manifest_files(path)?;
    let mut loader = Loader::new(*limits);
    for file in &files {
        loader.read(file)?;
    }
    let report = loader.finish();
    tracing::debug!(
        path = %path.display(),
        files = files.len(),
        objects = report.objects.len(),
        skipped = report.skipped.len(),
        "loaded manifests"
    );
    Ok(report)
}

/// Loads a manifest tree again and again, re-parsing only the files whose
/// size or modification time changed since the last load: a one-object
/// edit in a large tree costs one file's parse, not the tree's. The result
/// is what [`load_path`] would return.
///
/// It also keeps the merged objects as a persistent [`ObjectMap`], edited
/// only at the keys of files that changed: [`ManifestCache::view_if_changed`]
/// hands it on in O(1), and whoever holds the previous view finds what
/// changed by `diff` in time that grows with the change, not the tree.
#[derive(Default)]
pub struct ManifestCache {
    /// By path, so iterating is load order.
    files: BTreeMap<PathBuf, CachedFile>,
    /// A load happened (an empty tree then is not "changed" any more).
    loaded: bool,
    limits: Limits,
    /// Every key's winning object (the last definition in path order).
    view: ObjectMap,
    /// The files defining each key, in path order; two or more are
    /// duplicates, the last one wins.
    definers: HashMap<ObjectKey, Vec<PathBuf>>,
}

struct CachedFile {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// The file's objects with their origins, after its own duplicates.
    objects: Vec<(SharedObject, String)>,
    /// Where each key is in `objects`.
    positions: HashMap<ObjectKey, usize>,
    skipped: Vec<Skipped>,
    ignored: Vec<(String, usize)>,
    warnings: Vec<String>,
}

impl CachedFile {
    fn object(&self, key: &ObjectKey) -> Option<&(SharedObject, String)> {
        self.objects.get(*self.positions.get(key)?)
    }
}

/// One file re-read: the keys it defined before and defines now.
struct Edit {
    file: PathBuf,
    before: Vec<ObjectKey>,
    now: Vec<ObjectKey>,
}

impl Edit {
    fn new(file: &Path, before: Option<&CachedFile>, now: Option<&CachedFile>) -> Edit {
        let keys = |c: Option<&CachedFile>| {
            c.map(|c| c.positions.keys().cloned().collect())
                .unwrap_or_default()
        };
        Edit {
            file: file.to_path_buf(),
            before: keys(before),
            now: keys(now),
        }
    }
}

/// What [`ManifestCache::view_if_changed`] found: the merged objects and
/// what the files reported, as a [`LoadReport`] has them (cross-file
/// duplicate warnings come last, ordered by key).
#[derive(Clone, Debug, Default)]
pub struct ManifestView {
    pub objects: ObjectMap,
    pub skipped: Vec<Skipped>,
    pub ignored_kinds: std::collections::BTreeMap<String, usize>,
    pub warnings: Vec<String>,
}

/// A manifest file's path, size and modification time: what decides
/// whether it is parsed again.
type Scanned = (PathBuf, u64, Option<std::time::SystemTime>);

/// A file's size and modification time.
type Stat = (u64, Option<std::time::SystemTime>);

fn scan(path: &Path) -> Result<Vec<Scanned>, SourceError> {
    manifest_files(path)?
        .into_iter()
        .map(|file| {
            let meta = fs::metadata(&file).map_err(read_error(&file))?;
            let (len, modified) = (meta.len(), meta.modified().ok());
            Ok((file, len, modified))
        })
        .collect()
}

impl ManifestCache {
    /// A cache that reads within `limits` (`default()` uses the default
    /// [`Limits`]).
    pub fn with_limits(limits: Limits) -> Self {
        ManifestCache {
            limits,
            ..ManifestCache::default()
        }
    }

    pub fn load(&mut self, path: &Path) -> Result<LoadReport, SourceError> {
        let scanned = scan(path)?;
        self.load_scanned(scanned)
    }

    /// [`ManifestCache::load`], or `None` when no file was added, removed
    /// or changed (size or modification time) since the last load: one
    /// `stat` per file and nothing else, so a large tree can be looked at
    /// often.
    pub fn load_if_changed(&mut self, path: &Path) -> Result<Option<LoadReport>, SourceError> {
        match self.scan_if_changed(path)? {
            None => Ok(None),
            Some(scanned) => self.load_scanned(scanned).map(Some),
        }
    }

    /// The merged objects as a persistent map (see the type's note), with
    /// what the files reported; `None` as for
    /// [`ManifestCache::load_if_changed`], unless `force`.
    pub fn view_if_changed(
        &mut self,
        path: &Path,
        force: bool,
    ) -> Result<Option<ManifestView>, SourceError> {
        let scanned = if force {
            scan(path)?
        } else {
            match self.scan_if_changed(path)? {
                None => return Ok(None),
                Some(scanned) => scanned,
            }
        };
        self.update(scanned)?;
        Ok(Some(self.current_view()))
    }

    /// [`ManifestCache::view_if_changed`] after `files` alone may have
    /// changed under `root` (what a [`Look::Files`] names): only they are
    /// looked at, so an edit costs one `stat` and one parse however many
    /// files the tree holds. Before the first load, or for a path this
    /// cannot place (not below `root`, now a directory), the whole tree is
    /// looked at. Files in hidden directories are not manifests, as for a
    /// load.
    pub fn view_of_files(
        &mut self,
        root: &Path,
        files: &[PathBuf],
    ) -> Result<Option<ManifestView>, SourceError> {
        if !self.loaded || !root.is_dir() {
            return self.view_if_changed(root, false);
        }
        let mut changed = Vec::new();
        for file in files {
            let Ok(below) = file.strip_prefix(root) else {
                return self.view_if_changed(root, false);
            };
            let hidden = below
                .components()
                .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."));
            if hidden || !is_manifest(file) {
                continue;
            }
            let now: Option<Stat> = match fs::metadata(file) {
                Ok(meta) if meta.is_file() => Some((meta.len(), meta.modified().ok())),
                Ok(_) => return self.view_if_changed(root, false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(SourceError::Read {
                        path: file.clone(),
                        source,
                    });
                }
            };
            let cached = self.files.get(file).map(|c| (c.len, c.modified));
            if now != cached {
                changed.push((file.clone(), now));
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        let result = self.update_files(changed);
        self.forget_on_error(result)?;
        Ok(Some(self.current_view()))
    }

    /// The merged objects and, in load order, what the files reported.
    fn current_view(&self) -> ManifestView {
        let mut view = ManifestView {
            objects: self.view.clone(),
            ..ManifestView::default()
        };
        for cached in self.files.values() {
            view.skipped.extend(cached.skipped.iter().cloned());
            for (kind, n) in &cached.ignored {
                *view.ignored_kinds.entry(kind.clone()).or_default() += n;
            }
            view.warnings.extend(cached.warnings.iter().cloned());
        }
        let mut duplicated: Vec<(&ObjectKey, &Vec<PathBuf>)> = self
            .definers
            .iter()
            .filter(|(_, files)| files.len() > 1)
            .collect();
        duplicated.sort();
        for (key, files) in duplicated {
            let origins: Vec<&str> = files
                .iter()
                .filter_map(|f| Some(self.files.get(f)?.object(key)?.1.as_str()))
                .collect();
            for pair in origins.windows(2) {
                view.warnings
                    .push(format!("duplicate {key}: {} replaces {}", pair[1], pair[0]));
            }
        }
        view
    }

    fn scan_if_changed(&mut self, path: &Path) -> Result<Option<Vec<Scanned>>, SourceError> {
        let scanned = scan(path)?;
        let unchanged = self.loaded
            && scanned.len() == self.files.len()
            && scanned.iter().all(|(file, len, modified)| {
                self.files
                    .get(file)
                    .is_some_and(|c| c.len == *len && c.modified == *modified)
            });
        Ok((!unchanged).then_some(scanned))
    }

    fn load_scanned(&mut self, scanned: Vec<Scanned>) -> Result<LoadReport, SourceError> {
        self.update(scanned)?;
        let mut merged = Loader::new(self.limits);
        for cached in self.files.values() {
            for (object, origin) in &cached.objects {
                merged.add((**object).clone(), origin.clone());
            }
            merged.report.skipped.extend(cached.skipped.iter().cloned());
            for (kind, n) in &cached.ignored {
                *merged.report.ignored_kinds.entry(kind.clone()).or_default() += n;
            }
            merged
                .report
                .warnings
                .extend(cached.warnings.iter().cloned());
        }
        Ok(merged.finish())
    }

    /// Parses the files that changed and edits the merged view at their
    /// keys.
    fn update(&mut self, scanned: Vec<Scanned>) -> Result<(), SourceError> {
        let result = self.update_scanned(scanned);
        self.forget_on_error(result)
    }

    /// A file that could not be read failed the load: everything is
    /// forgotten, so the next load starts over.
    fn forget_on_error(&mut self, result: Result<(), SourceError>) -> Result<(), SourceError> {
        if result.is_err() {
            *self = ManifestCache::with_limits(self.limits);
        }
        result
    }

    fn update_scanned(&mut self, scanned: Vec<Scanned>) -> Result<(), SourceError> {
        let mut live = BTreeMap::new();
        let mut edits: Vec<Edit> = Vec::new();
        for (file, len, modified) in scanned {
            let cached = match self.files.remove(&file) {
                Some(c) if c.len == len && c.modified == modified => c,
                old => {
                    let fresh = self.parse(&file, len, modified)?;
                    edits.push(Edit::new(&file, old.as_ref(), Some(&fresh)));
                    fresh
                }
            };
            live.insert(file, cached);
        }
        for (file, gone) in std::mem::take(&mut self.files) {
            edits.push(Edit::new(&file, Some(&gone), None));
        }
        self.files = live;
        self.loaded = true;
        self.apply(edits);
        Ok(())
    }

    /// Re-reads `changed` files (`None`: removed) into the cache.
    fn update_files(&mut self, changed: Vec<(PathBuf, Option<Stat>)>) -> Result<(), SourceError> {
        let mut edits = Vec::with_capacity(changed.len());
        for (file, now) in changed {
            let old = self.files.remove(&file);
            let fresh = match now {
                Some((len, modified)) => Some(self.parse(&file, len, modified)?),
                None => None,
            };
            edits.push(Edit::new(&file, old.as_ref(), fresh.as_ref()));
            if let Some(fresh) = fresh {
                self.files.insert(file, fresh);
            }
        }
        self.apply(edits);
        Ok(())
    }

    /// Moves each edited file's keys between definers and puts every
    /// affected key's winner (the last definer in path order) in the view.
    fn apply(&mut self, edits: Vec<Edit>) {
        let mut affected: HashSet<ObjectKey> = HashSet::new();
        for Edit { file, before, now } in edits {
            for key in before {
                if let Some(files) = self.definers.get_mut(&key) {
                    files.retain(|f| *f != file);
                }
                affected.insert(key);
            }
            for key in now {
                let files = self.definers.entry(key.clone()).or_default();
                if let Err(at) = files.binary_search(&file) {
                    files.insert(at, file.clone());
                }
                affected.insert(key);
            }
        }
        for key in affected {
            let winner = self
                .definers
                .get(&key)
                .and_then(|files| files.last())
                .and_then(|file| self.files.get(file)?.object(&key))
                .map(|(object, _)| object.clone());
            match winner {
                Some(object) => {
                    self.view.insert(key, object);
                }
                None => {
                    self.view.remove(&key);
                    self.definers.remove(&key);
                }
            }
        }
    }

    fn parse(
        &self,
        file: &Path,
        len: u64,
        modified: Option<std::time::SystemTime>,
    ) -> Result<CachedFile, SourceError> {
        let mut one = Loader::new(self.limits);
        one.read(file)?;
        let mut origins: Vec<(usize, String)> = one.seen.into_values().collect();
        origins.sort();
        let objects: Vec<(SharedObject, String)> = one
            .report
            .objects
            .into_iter()
            .map(SharedObject::new)
            .zip(origins.into_iter().map(|(_, o)| o))
            .collect();
        let positions = objects
            .iter()
            .enumerate()
            .map(|(at, (object, _))| (object.key(), at))
            .collect();
        Ok(CachedFile {
            len,
            modified,
            objects,
            positions,
            skipped: one.report.skipped,
            ignored: one.report.ignored_kinds.into_iter().collect(),
            warnings: one.report.warnings,
        })
    }
}

/// Parses in-memory manifest text as if it were the file `origin` (which is
/// not read: it names the text in reports, and a `.json` extension selects
/// JSON).
pub fn parse_str(text: &str, origin: &Path) -> LoadReport {
    parse_bytes(text.as_bytes(), origin, &Limits::default())
}

/// Parses in-memory file contents as if they were read from the file
/// `origin`, within `limits`: exactly what a load does with a file's bytes.
pub fn parse_bytes(bytes: &[u8], origin: &Path, limits: &Limits) -> LoadReport {
    let mut loader = Loader::new(*limits);
    loader.file(origin, bytes);
    loader.finish()
}

/// Accumulates a report over files, keeping one object per key.
struct Loader {
    report: LoadReport,
    /// Position in `report.objects` and origin of each key's current object.
    seen: HashMap<ObjectKey, (usize, String)>,
    limits: Limits,
}

impl Loader {
    fn new(limits: Limits) -> Self {
        Loader {
            report: LoadReport::default(),
            seen: HashMap::new(),
            limits,
        }
    }

    /// Reads and parses one file; one over the size limit is skipped
    /// without reading it (and without trusting its size: reading stops
    /// one byte past the limit).
    fn read(&mut self, path: &Path) -> Result<(), SourceError> {
        let max = self.limits.max_file_bytes;
        let file = fs::File::open(path).map_err(read_error(path))?;
        let len = file.metadata().map_err(read_error(path))?.len();
        if len > max {
            self.too_large(path, &format!("is {len} bytes"));
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(read_error(path))?;
        if bytes.len() as u64 > max {
            // It grew while read, or is a device that says 0 and never ends.
            self.too_large(path, &format!("has more than {max} bytes"));
            return Ok(());
        }
        self.file(path, &bytes);
        Ok(())
    }

    /// `size` says how large: "is 17 bytes".
    fn too_large(&mut self, path: &Path, size: &str) {
        self.report.skipped.push(Skipped {
            file: path.to_path_buf(),
            document: 0,
            kind: None,
            name: None,
            reason: format!(
                "refused: file {size}, over the limit of {} bytes; not read",
                self.limits.max_file_bytes
            ),
        });
    }

    fn file(&mut self, path: &Path, bytes: &[u8]) {
        if bytes.len() as u64 > self.limits.max_file_bytes {
            self.too_large(path, &format!("is {} bytes", bytes.len()));
            return;
        }
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        match std::str::from_utf8(bytes) {
            Ok(text) => self.text(path, text),
            Err(err) => self.report.skipped.push(Skipped {
                file: path.to_path_buf(),
                document: 0,
                kind: None,
                name: None,
                reason: format!("not UTF-8 text: {err}"),
            }),
        }
    }

    fn text(&mut self, path: &Path, text: &str) {
        let docs = if is_json(path) {
            documents::json(text, &self.limits)
        } else {
            documents::yaml(text, &self.limits)
        };
        for doc in docs {
            let outcomes = match doc.value {
                Ok(value) => objects::decode(value),
                Err(reason) => vec![objects::Outcome::Skipped {
                    kind: None,
                    name: None,
                    reason,
                }],
            };
            for outcome in outcomes {
                match outcome {
                    objects::Outcome::Object { object, item } => {
                        let mut origin = format!("{} doc {}", path.display(), doc.index);
                        if !item.is_empty() {
                            origin = format!("{origin} {item}");
                        }
                        self.add(*object, origin);
                    }
                    objects::Outcome::Skipped { kind, name, reason } => {
                        self.report.skipped.push(Skipped {
                            file: path.to_path_buf(),
                            document: doc.index,
                            kind,
                            name,
                            reason,
                        });
                    }
                    objects::Outcome::Ignored { kind } => {
                        *self.report.ignored_kinds.entry(kind).or_default() += 1;
                    }
                }
            }
        }
    }

    fn add(&mut self, object: ClusterObject, origin: String) {
        let key = object.key();
        match self.seen.get_mut(&key) {
            Some((at, previous)) => {
                self.report
                    .warnings
                    .push(format!("duplicate {key}: {origin} replaces {previous}"));
                if let Some(slot) = self.report.objects.get_mut(*at) {
                    *slot = object;
                }
                *previous = origin;
            }
            None => {
                self.seen.insert(key, (self.report.objects.len(), origin));
                self.report.objects.push(object);
            }
        }
    }

    fn finish(self) -> LoadReport {
        self.report
    }
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|ext| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|m| ext.eq_ignore_ascii_case(m))
    })
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_path_buf();
    move |source| SourceError::Read { path, source }
}

/// `root` itself if it is not a directory, else the manifest files below it.
pub fn manifest_files(root: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let meta = fs::metadata(root).map_err(read_error(root))?;
    if !meta.is_dir() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut files = Vec::new();
    walk(root, &mut files, &mut HashSet::new())?;
    files.sort();
    Ok(files)
}

/// Follows symlinks, but visits each real directory once (no loops).
fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), SourceError> {
    if !visited.insert(fs::canonicalize(dir).map_err(read_error(dir))?) {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(read_error(dir))? {
        let path = entry.map_err(read_error(dir))?.path();
        if path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
        {
            continue;
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, files, visited)?,
            Ok(meta) if meta.is_file() && is_manifest(&path) => files.push(path),
            // Sockets, fifos and the like are never manifests.
            Ok(_) => {}
            // A manifest we cannot even stat (a dangling link) is unreadable.
            Err(source) if is_manifest(&path) => {
                return Err(SourceError::Read { path, source });
            }
            Err(_) => {}
        }
    }
    Ok(())
}
