//! The admin server's configuration: where it listens, how sessions behave, and who may use
//! it (principals). Read from TOML:
//!
//! ```toml
//! bind = "127.0.0.1:8417"        # loopback unless allow_non_loopback = true
//! secure_cookies = false         # true when served over TLS (a proxy in front)
//! session_ttl_secs = 28800
//! operator_roles = ["operator"]  # who may retry / skip / resolve / abort
//! currency = "USD"               # costs are cents of this currency (else plain units)
//!
//! [[principal]]
//! actor = "dana"
//! roles = ["finance"]
//! kind = "human"                 # or "agent": may read, never decide
//! token_blake3 = "<64 hex digits: annal admin hash-token>"
//! ```
//!
//! Tokens are stored only as their BLAKE3 hash; the clear token never touches the file.

use std::net::SocketAddr;
use std::path::Path;

use annal::{Actor, ActorKind};
use serde::Deserialize;

use crate::error::ConfigError;

/// Bytes in a token made by [`new_token`] (256 bits, hex-encoded to 64 characters).
const TOKEN_BYTES: usize = 32;
/// Shortest clear token [`hash_token`] accepts: shorter ones can be guessed.
pub const TOKEN_CHARS_MIN: usize = 24;

/// One identity that may use the server.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// The actor id decisions are recorded under.
    pub actor: String,
    /// Their roles, matched against a gate's `role:NAME` approvers.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Person or program. Programs may read but never decide.
    #[serde(default = "human")]
    pub kind: PrincipalKind,
    /// BLAKE3 hash of their token, 64 hex digits (see [`hash_token`]).
    pub token_blake3: String,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not the token, but it has no business in logs either.
        f.debug_struct("Principal")
            .field("actor", &self.actor)
            .field("roles", &self.roles)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn human() -> PrincipalKind {
    PrincipalKind::Human
}

/// Whether a principal is a person or a program, as the config file says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person.
    Human,
    /// A program (an agent, a bot, a service account).
    Agent,
}

impl Principal {
    /// The engine's view of this principal.
    pub fn actor(&self) -> Actor {
        let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        let mut actor = Actor::new(self.actor.clone(), &roles);
        if self.kind == PrincipalKind::Agent {
            actor.kind = ActorKind::Agent;
        }
        actor
    }
}

/// The server's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where [`crate::serve`] listens. Default `127.0.0.1:0` (loopback, any free port).
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Listening on anything but loopback exposes the inbox to the network; refused unless
    /// this is set (put TLS in front and set `secure_cookies`).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Mark cookies `Secure` (the page is served over HTTPS, e.g. behind a TLS proxy).
    #[serde(default)]
    pub secure_cookies: bool,
    /// How long a page session lasts after login, in seconds.
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Roles that may act on escalated runs (retry, skip, resolve, abort).
    #[serde(default = "default_operator_roles")]
    pub operator_roles: Vec<String>,
    /// When set, gate costs are cents of this currency and the inbox shows them as money
    /// (`USD 420.00`); otherwise as plain units.
    #[serde(default)]
    pub currency: Option<String>,
    /// Who may use the server.
    #[serde(default, rename = "principal")]
    pub principals: Vec<Principal>,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_session_ttl_secs() -> u64 {
    8 * 3600
}

fn default_operator_roles() -> Vec<String> {
    vec!["operator".into()]
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            allow_non_loopback: false,
            secure_cookies: false,
            session_ttl_secs: default_session_ttl_secs(),
            operator_roles: default_operator_roles(),
            currency: None,
            principals: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// Parses and checks a configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: AdminConfig =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and checks a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text)
    }

    /// Adds a principal whose token is `token` (hashed here, surrounding white space
    /// ignored as everywhere tokens are read); for services that build their configuration
    /// in code, and for tests.
    pub fn with_principal(
        mut self,
        actor: &str,
        roles: &[&str],
        kind: PrincipalKind,
        token: &str,
    ) -> Self {
        self.principals.push(Principal {
            actor: actor.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            kind,
            token_blake3: blake3::hash(token.trim().as_bytes()).to_hex().to_string(),
        });
        self
    }

    /// Checks what parsing cannot: hashes are hashes, actors are unique, the TTL is sane.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.principals {
            if p.actor.trim().is_empty() {
                return Err(ConfigError::Invalid(
                    "a principal has an empty actor".into(),
                ));
            }
            if !seen.insert(p.actor.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "principal '{}' is listed twice",
                    p.actor
                )));
            }
            if blake3::Hash::from_hex(p.token_blake3.trim()).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "principal '{}': token_blake3 must be 64 hex digits (annal admin hash-token)",
                    p.actor
                )));
            }
        }
        if self.session_ttl_secs == 0 {
            return Err(ConfigError::Invalid("session_ttl_secs must be > 0".into()));
        }
        Ok(())
    }
}

/// The BLAKE3 hash of a clear token, as `token_blake3` stores it. Refuses tokens shorter
/// than [`TOKEN_CHARS_MIN`] characters.
pub fn hash_token(token: &str) -> Result<String, ConfigError> {
    let token = token.trim();
    if token.chars().count() < TOKEN_CHARS_MIN {
        return Err(ConfigError::WeakToken {
            min_chars: TOKEN_CHARS_MIN,
        });
    }
    Ok(blake3::hash(token.as_bytes()).to_hex().to_string())
}

/// A new random token (256 bits from the OS, 64 hex digits).
pub fn new_token() -> Result<String, ConfigError> {
    random_hex::<TOKEN_BYTES>().map_err(|e| ConfigError::Random(e.to_string()))
}

/// `N` random bytes from the OS CSPRNG, hex-encoded.
pub(crate) fn random_hex<const N: usize>() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_parses_and_is_checked() {
        let hash = hash_token("a-long-enough-token-for-tests").unwrap();
        let text = format!(
            "bind = \"127.0.0.1:8417\"\n[[principal]]\nactor = \"dana\"\nroles = [\"finance\"]\ntoken_blake3 = \"{hash}\"\n[[principal]]\nactor = \"bot\"\nkind = \"agent\"\ntoken_blake3 = \"{hash}\"\n"
        );
        let config = AdminConfig::from_toml(&text).unwrap();
        assert_eq!(config.principals.len(), 2);
        assert!(!config.principals[0].actor().is_agent());
        assert!(config.principals[1].actor().is_agent());
        assert!(!format!("{config:?}").contains(&hash), "no hash in Debug");
        let twice = text.replace("\"bot\"", "\"dana\"");
        assert!(AdminConfig::from_toml(&twice).is_err());
        let bad = text.replace(&hash, "not-a-hash");
        assert!(AdminConfig::from_toml(&bad).is_err());
        assert!(AdminConfig::from_toml("nonsense = 1").is_err());
        assert!(hash_token("short").is_err());
        let token = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token().unwrap());
    }
}
