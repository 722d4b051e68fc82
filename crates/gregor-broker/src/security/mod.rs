//! Security (issue 19): listeners with Kafka's security protocols, TLS ([`tls`]), SASL
//! authentication ([`sasl`]) and SCRAM credentials ([`scram`]).
//!
//! A listener is `PROTOCOL://HOST:PORT` with PROTOCOL one of PLAINTEXT, SSL, SASL_PLAINTEXT,
//! SASL_SSL (the protocol is also the listener's name: Gregor has no
//! `listener.security.protocol.map`). The server runs TLS on SSL / SASL_SSL listeners and
//! gates every request on SASL listeners until SaslAuthenticate succeeded; handlers see the
//! listener and the principal in their [`crate::handlers::RequestContext`].

pub mod sasl;
pub mod scram;
pub mod tls;

use std::fmt;
use std::str::FromStr;

/// Kafka's security protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections run TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether connections must authenticate with SASL before any other request.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(SecurityProtocol::Plaintext),
            "SSL" => Ok(SecurityProtocol::Ssl),
            "SASL_PLAINTEXT" => Ok(SecurityProtocol::SaslPlaintext),
            "SASL_SSL" => Ok(SecurityProtocol::SaslSsl),
            other => Err(format!(
                "unknown security protocol {other:?} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
            )),
        }
    }
}

/// One entry of `listeners` / `advertised.listeners` / `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub protocol: SecurityProtocol,
    pub host: String,
    pub port: u16,
}

impl ListenerSpec {
    /// `PROTOCOL://HOST:PORT`, or a plain `HOST:PORT` (PLAINTEXT). IPv6 hosts in brackets.
    pub fn parse(s: &str) -> Result<ListenerSpec, String> {
        let s = s.trim();
        let (protocol, addr) = match s.split_once("://") {
            Some((p, a)) => (p.parse()?, a),
            None => (SecurityProtocol::Plaintext, s),
        };
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("listener {s:?} must be [PROTOCOL://]HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("listener {s:?}: bad port {port:?}"))?;
        Ok(ListenerSpec {
            protocol,
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
        })
    }

    /// A comma-separated list; two listeners of one protocol are refused (the protocol is
    /// the listener's name).
    pub fn parse_list(s: &str) -> Result<Vec<ListenerSpec>, String> {
        let mut out: Vec<ListenerSpec> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let spec = ListenerSpec::parse(entry)?;
            if out.iter().any(|o| o.protocol == spec.protocol) {
                return Err(format!("two {} listeners in {s:?}", spec.protocol));
            }
            out.push(spec);
        }
        Ok(out)
    }

    /// The address to bind.
    pub fn bind_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ListenerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol, self.bind_addr())
    }
}

/// A bound listener as connections see it: its protocol and the endpoint clients are told
/// (Metadata, FindCoordinator, DescribeCluster) when they connected on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    pub protocol: SecurityProtocol,
    pub advertised_host: String,
    pub advertised_port: i32,
}

/// Who a connection is: Kafka's `KafkaPrincipal` as `type:name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: &'static str,
    pub name: String,
}

impl Principal {
    pub const ANONYMOUS: &'static str = "ANONYMOUS";

    pub fn user(name: impl Into<String>) -> Principal {
        Principal {
            kind: "User",
            name: name.into(),
        }
    }

    pub fn anonymous() -> Principal {
        Principal::user(Principal::ANONYMOUS)
    }
}

impl Default for Principal {
    fn default() -> Principal {
        Principal::anonymous()
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_parse_with_and_without_protocol() {
        let l = ListenerSpec::parse_list(
            "PLAINTEXT://127.0.0.1:9092, SASL_PLAINTEXT://127.0.0.1:9093,SSL://[::1]:9094",
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].protocol, SecurityProtocol::SaslPlaintext);
        assert_eq!(l[2].host, "::1");
        assert_eq!(l[2].bind_addr(), "[::1]:9094");
        let plain = ListenerSpec::parse("127.0.0.1:0").unwrap();
        assert_eq!(plain.protocol, SecurityProtocol::Plaintext);
        assert_eq!(plain.to_string(), "PLAINTEXT://127.0.0.1:0");
        assert!(ListenerSpec::parse("TLS://h:1").is_err());
        assert!(ListenerSpec::parse("SSL://h").is_err());
        assert!(ListenerSpec::parse_list("SSL://a:1,SSL://b:2").is_err());
    }
}
