//! Why a command failed, and the exit status that says so (the table in
//! `setpointctl --help`).

use tonic::Code;

/// A failure with its exit status.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Exit status 1: the command itself failed.
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// Exit status 2: bad arguments or an unreadable file.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// Exit status 4: the server cannot be reached.
    pub fn unreachable(message: impl Into<String>) -> Failure {
        Failure {
            code: 4,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        let code = match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => 3,
            Code::Unavailable | Code::DeadlineExceeded => 4,
            _ => 1,
        };
        let message = match s.code() {
            Code::Unauthenticated => format!("refused (unauthenticated): {}", s.message()),
            Code::PermissionDenied => format!("refused (permission denied): {}", s.message()),
            _ => s.message().to_string(),
        };
        Failure { code, message }
    }
}
