//! SASL authentication of one connection (KIP-43 SaslHandshake v1, KIP-152
//! SaslAuthenticate): PLAIN and SCRAM-SHA-256 / SCRAM-SHA-512.
//!
//! The server keeps one [`Authenticator`] per connection on a SASL listener and routes
//! SaslHandshake / SaslAuthenticate to it; until it reports [`Outcome::Authenticated`],
//! every other request but ApiVersions closes the connection. Secrets (passwords, proofs)
//! are never logged: failures carry fixed reasons only.
//!
//! PLAIN users come from `sasl.plain.users.file` (one `user:password` a line, `#` comments);
//! a user not in the file logs in with PLAIN if it has a SCRAM credential and the password
//! matches it, so that users made with `gregor user create` log in with either mechanism.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::scram::{constant_time_eq, ScramMechanism, ScramServer, ScramStore, Step};
use super::Principal;

/// Who may log in: PLAIN users of the file and the SCRAM credential store.
pub struct Users {
    pub scram: ScramStore,
    plain: HashMap<String, String>,
}

impl Users {
    pub fn in_memory() -> Users {
        Users {
            scram: ScramStore::in_memory(),
            plain: HashMap::new(),
        }
    }

    /// The SCRAM store of `data_dir` and the PLAIN users of `plain_file`.
    pub fn load(plain_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<Users> {
        let mut plain = HashMap::new();
        if let Some(path) = plain_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading sasl.plain.users.file {}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((user, password)) = line.split_once(':') else {
                    anyhow::bail!("{} line {}: expected user:password", path.display(), n + 1);
                };
                plain.insert(user.trim().to_string(), password.to_string());
            }
        }
        Ok(Users {
            scram: ScramStore::open(data_dir)?,
            plain,
        })
    }

    fn check_plain(&self, user: &str, password: &str) -> bool {
        if let Some(expected) = self.plain.get(user) {
            return constant_time_eq(expected.as_bytes(), password.as_bytes());
        }
        [ScramMechanism::Sha512, ScramMechanism::Sha256]
            .into_iter()
            .find_map(|m| Some((m, self.scram.get(user, m)?)))
            .is_some_and(|(m, c)| c.matches_password(m, password))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    fn from_name(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            return Some(Mechanism::Plain);
        }
        ScramMechanism::from_name(name).map(Mechanism::Scram)
    }

    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

enum State {
    /// Waiting for SaslHandshake.
    Start,
    /// Mechanism chosen; waiting for the first SaslAuthenticate.
    Chosen(Mechanism),
    Scram(ScramMechanism, Box<ScramServer>),
    Done,
}

/// What the connection does after a SASL request's response.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Go on: more SASL requests follow.
    Continue,
    /// Authenticated: every request is allowed from now on.
    Authenticated(Principal),
    /// Send the response (after `connection.failed.authentication.delay.ms` for a failed
    /// authentication) and close the connection.
    Close { failed_authentication: bool },
}

/// One connection's SASL state.
pub struct Authenticator {
    enabled: Vec<String>,
    state: State,
}

fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

impl Authenticator {
    /// `enabled`: `sasl.enabled.mechanisms`, as configured.
    pub fn new(enabled: &[String]) -> Authenticator {
        Authenticator {
            enabled: enabled.to_vec(),
            state: State::Start,
        }
    }

    pub fn authenticated(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn handshake(&mut self, req: &SaslHandshakeRequest) -> (SaslHandshakeResponse, Outcome) {
        let mut resp = SaslHandshakeResponse::default()
            .with_mechanisms(self.enabled.iter().map(|m| sb(m.clone())).collect());
        if !matches!(self.state, State::Start) {
            resp.error_code = ResponseError::IllegalSaslState.code();
            return (
                resp,
                Outcome::Close {
                    failed_authentication: false,
                },
            );
        }
        let wanted = req.mechanism.as_str();
        let enabled = self.enabled.iter().any(|m| m.eq_ignore_ascii_case(wanted));
        match Mechanism::from_name(wanted).filter(|_| enabled) {
            Some(m) => {
                self.state = State::Chosen(m);
                (resp, Outcome::Continue)
            }
            None => {
                resp.error_code = ResponseError::UnsupportedSaslMechanism.code();
                (
                    resp,
                    Outcome::Close {
                        failed_authentication: false,
                    },
                )
            }
        }
    }

    pub fn authenticate(
        &mut self,
        req: &SaslAuthenticateRequest,
        users: &Users,
    ) -> (SaslAuthenticateResponse, Outcome) {
        let mut resp = SaslAuthenticateResponse::default();
        let state = std::mem::replace(&mut self.state, State::Done);
        let (mechanism, step) = match state {
            State::Chosen(Mechanism::Plain) => (Mechanism::Plain, plain(&req.auth_bytes, users)),
            State::Chosen(Mechanism::Scram(m)) => {
                let mut server = ScramServer::new(m);
                let step = server.step(&req.auth_bytes, |u| users.scram.get(u, m));
                if matches!(step, Step::Continue(_)) {
                    self.state = State::Scram(m, Box::new(server));
                }
                (Mechanism::Scram(m), step)
            }
            State::Scram(m, mut server) => {
                let step = server.step(&req.auth_bytes, |u| users.scram.get(u, m));
                (Mechanism::Scram(m), step)
            }
            State::Start | State::Done => {
                resp.error_code = ResponseError::IllegalSaslState.code();
                resp.error_message = Some(sb("SaslAuthenticate without a SaslHandshake first"));
                return (
                    resp,
                    Outcome::Close {
                        failed_authentication: false,
                    },
                );
            }
        };
        match step {
            Step::Continue(challenge) => {
                resp.auth_bytes = Bytes::from(challenge);
                (resp, Outcome::Continue)
            }
            Step::Done { user, reply } => {
                resp.auth_bytes = Bytes::from(reply);
                self.state = State::Done;
                (resp, Outcome::Authenticated(Principal::user(user)))
            }
            Step::Failed(reason) => {
                tracing::debug!(mechanism = mechanism.name(), reason, "SASL step failed");
                resp.error_code = ResponseError::SaslAuthenticationFailed.code();
                resp.error_message = Some(sb(format!(
                    "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
                    mechanism.name()
                )));
                self.state = State::Done;
                (
                    resp,
                    Outcome::Close {
                        failed_authentication: true,
                    },
                )
            }
        }
    }
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
fn plain(message: &[u8], users: &Users) -> Step {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("invalid PLAIN message");
    };
    let (Ok(authzid), Ok(user), Ok(password)) = (
        std::str::from_utf8(authzid),
        std::str::from_utf8(user),
        std::str::from_utf8(password),
    ) else {
        return Step::Failed("PLAIN message is not UTF-8");
    };
    if !authzid.is_empty() && authzid != user {
        return Step::Failed("PLAIN authorization id differs from the user name");
    }
    if user.is_empty() || !users.check_plain(user, password) {
        return Step::Failed("Authentication failed: invalid credentials");
    }
    Step::Done {
        user: user.to_string(),
        reply: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let mut u = Users::in_memory();
        u.plain.insert("alice".into(), "secret".into());
        u
    }

    #[test]
    fn plain_logs_in_and_refuses_wrong_passwords() {
        let enabled = vec!["PLAIN".to_string(), "SCRAM-SHA-256".to_string()];
        let users = users();
        let mut a = Authenticator::new(&enabled);
        let hs = SaslHandshakeRequest::default().with_mechanism(sb("PLAIN"));
        assert_eq!(a.handshake(&hs).1, Outcome::Continue);
        let req = SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from_static(b"\0alice\0secret"));
        let (resp, outcome) = a.authenticate(&req, &users);
        assert_eq!(resp.error_code, 0);
        assert_eq!(outcome, Outcome::Authenticated(Principal::user("alice")));
        assert!(a.authenticated());

        let mut b = Authenticator::new(&enabled);
        b.handshake(&hs);
        let req = SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from_static(b"\0alice\0nope"));
        let (resp, outcome) = b.authenticate(&req, &users);
        assert_eq!(
            resp.error_code,
            ResponseError::SaslAuthenticationFailed.code()
        );
        assert_eq!(
            outcome,
            Outcome::Close {
                failed_authentication: true
            }
        );
    }

    #[test]
    fn disabled_mechanisms_are_refused() {
        let mut a = Authenticator::new(&["PLAIN".to_string()]);
        let hs = SaslHandshakeRequest::default().with_mechanism(sb("SCRAM-SHA-512"));
        let (resp, outcome) = a.handshake(&hs);
        assert_eq!(
            resp.error_code,
            ResponseError::UnsupportedSaslMechanism.code()
        );
        assert!(matches!(outcome, Outcome::Close { .. }));
    }
}
