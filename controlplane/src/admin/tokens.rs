//! Who may call the admin API: the token file (`<role> <token>` lines,
//! reloaded when its bytes change), tokens compared in constant time, and
//! the interceptor that checks the bearer token before a request's body is
//! read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Status};

use crate::reload::Reloading;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Revisions, show, diff, status.
    Read,
    /// Everything, including rollback, pause and resume.
    Admin,
}

/// The tokens of a token file, with their roles.
#[derive(Clone)]
pub struct Tokens {
    tokens: Vec<(Access, Vec<u8>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens)", self.tokens.len())
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the admin token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token file line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the admin token file has no token")]
    Empty,
}

/// Tokens shorter than this are refused when the file is read.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Reads and parses the file, warning when group or others may read
    /// or write it.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let tokens = Tokens::parse(&text)?;
        if let Some(warning) = std::fs::metadata(path)
            .ok()
            .and_then(|m| exposure_warning(path, m.permissions()))
        {
            tracing::warn!("{warning}");
        }
        Ok(tokens)
    }

    /// Parses `<role> <token>` or `<token>` lines; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<Tokens, TokenFileError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (access, token) = match words.as_slice() {
                [token] => (Access::Admin, *token),
                ["read", token] => (Access::Read, *token),
                ["admin", token] => (Access::Admin, *token),
                [role, _] => {
                    return Err(TokenFileError::Line {
                        line: i + 1,
                        reason: format!("unknown role {role:?} (expected read or admin)"),
                    });
                }
                _ => {
                    return Err(TokenFileError::Line {
                        line: i + 1,
                        reason: "expected `<role> <token>` or `<token>`".into(),
                    });
                }
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(TokenFileError::Line {
                    line: i + 1,
                    reason: format!("a token must be at least {MIN_TOKEN_LEN} characters"),
                });
            }
            tokens.push((access, token.as_bytes().to_vec()));
        }
        if tokens.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Tokens { tokens })
    }

    /// The role of `presented`, checking every token in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<Access> {
        let mut found = None;
        for (access, token) in &self.tokens {
            if constant_time_eq(token, presented) {
                found = found.max(Some(*access));
            }
        }
        found
    }
}

/// A warning when a token file's mode lets group or others read or write
/// it (the owner's bits are the operator's business).
fn exposure_warning(path: &Path, permissions: std::fs::Permissions) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = permissions.mode() & 0o777;
    (mode & 0o066 != 0).then(|| {
        format!(
            "the admin token file {} is readable by group or others (mode {mode:04o}): \
             anyone who reads it holds its tokens; chmod 600 it (in Kubernetes: defaultMode 0400)",
            path.display()
        )
    })
}

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The current tokens, or `None` when the control plane has no token file.
pub(super) type TokenSource = Option<Arc<Reloading<Tokens>>>;

/// Checks the bearer token from the request's headers and records its
/// [`Access`] in the request's extensions. It runs as a tonic interceptor,
/// before the service is called — that is, before any byte of the body is
/// read or decoded — so a caller without a token costs a header parse.
#[derive(Clone)]
pub struct Authenticate {
    pub(super) tokens: TokenSource,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Err(Status::unauthenticated(
                "the admin API is disabled: the control plane was started without --admin-token-file",
            ));
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization is not `Bearer <token>`"))?;
        let access = tokens
            .get()
            .check(presented)
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        request.extensions_mut().insert(access);
        Ok(request)
    }
}

/// Whether the caller's token (checked by [`Authenticate`]) allows `need`.
/// A request that did not pass the interceptor has no access at all.
pub(super) fn require<T>(request: &Request<T>, need: Access) -> Result<(), Status> {
    match request.extensions().get::<Access>() {
        None => Err(Status::unauthenticated(
            "no token was checked for this call",
        )),
        Some(have) if *have < need => Err(Status::permission_denied(
            "this token has the read role; the call needs admin",
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_parse_with_roles() {
        let t = Tokens::parse(
            "# comment\n\nread rrrrrrrrrrrrrrrrrrrr\nadmin aaaaaaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbbbb\n",
        )
        .expect("parses");
        assert_eq!(t.check(b"rrrrrrrrrrrrrrrrrrrr"), Some(Access::Read));
        assert_eq!(t.check(b"aaaaaaaaaaaaaaaaaaaa"), Some(Access::Admin));
        assert_eq!(t.check(b"bbbbbbbbbbbbbbbbbbbb"), Some(Access::Admin));
        assert_eq!(t.check(b"rrrrrrrrrrrrrrrrrrr"), None);
        assert_eq!(t.check(b"rrrrrrrrrrrrrrrrrrrrr"), None);
        assert_eq!(t.check(b""), None);
        assert!(matches!(
            Tokens::parse("root xxxxxxxxxxxxxxxxxxxx"),
            Err(TokenFileError::Line { line: 1, .. })
        ));
        assert!(matches!(
            Tokens::parse("short"),
            Err(TokenFileError::Line { .. })
        ));
        assert!(matches!(
            Tokens::parse("# nothing\n"),
            Err(TokenFileError::Empty)
        ));
    }

    #[test]
    fn token_files_others_may_read_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        for (mode, warned) in [
            (0o600, false),
            (0o400, false),
            (0o700, false),
            (0o640, true),
            (0o440, true),
            (0o604, true),
            (0o620, true),
            (0o644, true),
        ] {
            let warning = exposure_warning(Path::new("/t"), std::fs::Permissions::from_mode(mode));
            assert_eq!(warning.is_some(), warned, "{mode:o}: {warning:?}");
        }
    }

    #[test]
    fn constant_time_eq_is_eq() {
        for (a, b) in [("", ""), ("a", "a"), ("a", "b"), ("ab", "a"), ("a", "ab")] {
            assert_eq!(constant_time_eq(a.as_bytes(), b.as_bytes()), a == b);
        }
    }
}
