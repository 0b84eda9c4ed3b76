//! # annal-admin
//!
//! The surface reviewers and operators use while the service runs: a JSON API under
//! `/api/v1` (bearer tokens) and an approval inbox page at `/inbox` (login with a token,
//! then a session cookie), both over the service's own [`annal::Engine`].
//!
//! A service either merges [`Admin::router`] into its own axum app, or calls [`serve`] to
//! listen on a port of its own (loopback unless configured otherwise):
//!
//! ```no_run
//! # async fn demo(engine: annal::Engine) -> Result<(), annal_admin::ServeError> {
//! let config = annal_admin::AdminConfig::load("admin.toml")?;
//! let server = annal_admin::serve(engine, config).await?;
//! println!("inbox at {}/inbox", server.url());
//! # Ok(()) }
//! ```
//!
//! Invariants, each enforced here and tested in `tests/api.rs`:
//! - **no anonymous decision**: every decision and operator action comes from an
//!   authenticated principal, recorded as that actor with the role they decided under;
//!   agents may read but never decide;
//! - **CSRF**: every form that changes state carries the session's CSRF token (and the
//!   session cookie is `SameSite=Strict`); the bearer API takes no cookies;
//! - **digest binding**: a decision names the digest of the action it decides, and is
//!   refused if the gate asks for something else;
//! - **durable before the answer**: the answer to a decision is sent once the engine has
//!   made it durable, and the run is woken in this process at once;
//! - **nothing written on refusal**, and tokens and session ids are never logged.
//!
//! Files: `config.rs` (TOML, principals, token hashes), `auth.rs` (tokens, sessions,
//! CSRF), `api.rs` (JSON endpoints), `page.rs` (the inbox page), `wire.rs` (JSON bodies
//! shared with clients), `error.rs`.

mod api;
mod auth;
pub mod config;
mod error;
mod page;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use annal::clock::{Clock, TokioClock};
use annal::Engine;
use axum::http::{header, HeaderValue};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

pub use config::{hash_token, new_token, AdminConfig, Principal, PrincipalKind};
pub use error::{ApiError, ConfigError, ServeError};

/// Largest request body accepted (forms and JSON), in bytes.
const BODY_BYTES_MAX: usize = 64 * 1024;

/// Shared by every handler.
pub(crate) struct AdminState {
    pub(crate) engine: Engine,
    pub(crate) config: AdminConfig,
    pub(crate) principals: auth::Principals,
    pub(crate) sessions: auth::Sessions,
    pub(crate) clock: Arc<dyn Clock>,
}

impl AdminState {
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Whether `actor` may act on escalated runs.
    pub(crate) fn is_operator(&self, actor: &annal::Actor) -> bool {
        !actor.is_agent()
            && actor
                .roles
                .iter()
                .any(|r| self.config.operator_roles.contains(r))
    }
}

/// The admin surface over one engine: build it, then take its [`Router`] or [`serve`] it.
#[derive(Clone)]
pub struct Admin {
    state: Arc<AdminState>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("bind", &self.state.config.bind)
            .field("principals", &self.state.config.principals.len())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin surface of `engine`, with `config`'s principals.
    pub fn new(engine: Engine, config: AdminConfig) -> Result<Self, ConfigError> {
        Self::with_clock(engine, config, Arc::new(TokioClock::new()))
    }

    /// As [`Admin::new`], with the clock that times sessions and deadline countdowns (tests
    /// pass the engine's clock).
    pub fn with_clock(
        engine: Engine,
        config: AdminConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if config.principals.is_empty() {
            tracing::warn!("admin server has no principals: nobody can log in or decide");
        }
        let principals = auth::Principals::new(&config);
        Ok(Self {
            state: Arc::new(AdminState {
                engine,
                config,
                principals,
                sessions: auth::Sessions::default(),
                clock,
            }),
        })
    }

    /// Every route: `/api/v1/...`, `/login`, `/logout`, `/inbox`, `/inbox/decide`,
    /// `/assets/inbox.css`. Merge it into a service's app (`app.merge(admin.router())`): the
    /// page's links, redirects and cookies use these absolute paths, so it is not meant to
    /// be nested under a prefix.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(api::routes())
            .merge(page::routes())
            .with_state(Arc::clone(&self.state))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                BODY_BYTES_MAX,
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("DENY"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ))
            .layer(tower_http::trace::TraceLayer::new_for_http())
    }
}

/// A running admin server (see [`serve`]). Dropping it does not stop it; call
/// [`Served::shutdown`].
#[derive(Debug)]
pub struct Served {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL of the API and the page.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes requests in flight, and returns.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result.map_err(ServeError::Io),
            Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Serves the admin surface of `engine` on `config.bind` (default `127.0.0.1:0`: loopback,
/// a free port; [`Served::url`] says which). A non-loopback address is refused unless
/// `allow_non_loopback` is set, and then logged as a warning.
pub async fn serve(engine: Engine, config: AdminConfig) -> Result<Served, ServeError> {
    let admin = Admin::new(engine, config)?;
    admin.serve().await
}

impl Admin {
    /// Serves this admin surface on its configured address (see [`serve`]).
    pub async fn serve(&self) -> Result<Served, ServeError> {
        let bind = self.state.config.bind;
        if !bind.ip().is_loopback() {
            if !self.state.config.allow_non_loopback {
                return Err(ServeError::NonLoopback { addr: bind });
            }
            tracing::warn!(%bind, "admin server listens beyond loopback: the inbox is reachable from the network; serve it behind TLS");
        }
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = self.router();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, "admin server listening");
        Ok(Served {
            addr,
            stop: Some(stop),
            task,
        })
    }
}
