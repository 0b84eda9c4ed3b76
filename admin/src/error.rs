//! Errors of the admin layer: configuration, serving, and the typed error bodies every
//! endpoint answers with.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::wire::ErrorBody;

/// The configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read admin config {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file does not parse, or says something impossible.
    #[error("invalid admin config: {0}")]
    Invalid(String),
    /// A token too short to be safe.
    #[error("a token needs at least {min_chars} characters (annal admin new-token makes one)")]
    WeakToken {
        /// The minimum.
        min_chars: usize,
    },
    /// The OS random source failed.
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A non-loopback address without `allow_non_loopback = true`.
    #[error("refusing to listen on {addr}: not a loopback address; set allow_non_loopback = true (and put TLS in front) to expose the inbox")]
    NonLoopback {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },
    /// Binding or serving failed.
    #[error("admin server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// An answer that is not a success: an HTTP status and a typed JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body (boxed: errors travel in `Result`s through every handler).
    pub body: Box<ErrorBody>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Box::new(ErrorBody::new(code, message)),
        }
    }

    /// No credentials at all.
    pub(crate) fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send Authorization: Bearer <token>",
        )
    }

    /// Credentials that match no principal.
    pub(crate) fn bad_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the token matches no principal",
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<annal::Error> for ApiError {
    fn from(e: annal::Error) -> Self {
        use annal::Error as E;
        let message = e.to_string();
        let (status, code) = match &e {
            E::UnknownGate(_) => (StatusCode::NOT_FOUND, "unknown_gate"),
            E::UnknownRun(_) => (StatusCode::NOT_FOUND, "unknown_run"),
            E::AlreadyDecided { .. } => (StatusCode::CONFLICT, "already_decided"),
            E::GateExpired { .. } => (StatusCode::GONE, "expired"),
            E::NotAllowed { .. } => (StatusCode::FORBIDDEN, "not_allowed"),
            E::AgentMayNotDecide { .. } => (StatusCode::FORBIDDEN, "agent_not_allowed"),
            E::ActionChanged { .. } => (StatusCode::CONFLICT, "action_changed"),
            E::ReasonRequired { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "reason_required"),
            E::EditNotAllowed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "edit_not_allowed"),
            E::NotWaiting { .. } => (StatusCode::CONFLICT, "not_waiting"),
            E::ActionRefused { .. } => (StatusCode::CONFLICT, "action_refused"),
            E::Payload(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::Shutdown | E::Storage(annal_storage::Error::Poisoned { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "admin request failed");
        }
        let mut body = ErrorBody::new(code, message);
        match e {
            E::AlreadyDecided {
                gate,
                actor,
                role,
                approved,
                decided_ms,
            } => {
                body.gate = Some(gate.to_string());
                body.actor = Some(actor);
                body.role = role;
                body.decision = Some(if approved { "approved" } else { "rejected" }.into());
                body.decided_ms = Some(decided_ms);
            }
            E::ActionChanged {
                gate,
                expected,
                found,
            } => {
                body.gate = Some(gate.to_string());
                body.expected_digest = Some(expected.to_string());
                body.found_digest = Some(found.to_string());
            }
            E::NotAllowed { gate, actor } | E::AgentMayNotDecide { gate, actor } => {
                body.gate = Some(gate.to_string());
                body.actor = Some(actor);
            }
            E::UnknownGate(gate)
            | E::GateExpired { gate }
            | E::ReasonRequired { gate }
            | E::EditNotAllowed { gate, .. } => body.gate = Some(gate.to_string()),
            E::UnknownRun(run) | E::NotWaiting { run, .. } | E::ActionRefused { run, .. } => {
                body.run = Some(run.to_string())
            }
            _ => {}
        }
        Self {
            status,
            body: Box::new(body),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, axum::Json(*self.body)).into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"annal\""),
            );
        }
        response
    }
}
