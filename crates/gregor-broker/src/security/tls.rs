//! TLS for SSL / SASL_SSL listeners, with rustls (ring provider).
//!
//! `ssl.certificate.location` / `ssl.key.location`: the broker's certificate chain and key
//! (PEM). `ssl.ca.location`: the CAs that sign client certificates; with
//! `ssl.client.auth = "required"` a client must present one (`"requested"`: may), and an
//! SSL connection's principal is the certificate's subject (`User:CN=client,O=Acme`, in
//! RFC 2253 order as Kafka's default `X500Principal` names it).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
pub use tokio_rustls::TlsAcceptor;

/// `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            other => Err(format!(
                "ssl.client.auth must be none, requested or required, not {other:?}"
            )),
        }
    }
}

/// The crypto provider: ring (builds with a C compiler only; aws-lc-rs needs cmake).
/// rustls 0.23.48 marks it deprecated for lacking post-quantum key exchange, which no Kafka
/// client offers yet.
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The rustls server configuration of the TLS listeners.
pub fn server_config(
    certificate: &Path,
    key: &Path,
    ca: Option<&Path>,
    client_auth: ClientAuth,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .with_context(|| format!("reading ssl.certificate.location {}", certificate.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", certificate.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", certificate.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading ssl.key.location {}", key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (ca, client_auth) {
        (_, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => anyhow::bail!("ssl.client.auth needs ssl.ca.location"),
        (Some(ca), auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading ssl.ca.location {}", ca.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("parsing {}", ca.display()))?)
                    .with_context(|| format!("a CA certificate of {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .context("the certificate and key do not match")?;
    Ok(Arc::new(config))
}

/// A DER element: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subject of a DER certificate as RFC 2253 names it (`CN=client,OU=x,O=Acme,C=DE`:
/// the last RDN first), or `None` if the certificate cannot be read.
pub fn subject_name(cert: &[u8]) -> Option<String> {
    let (_, certificate, _) = der_next(cert)?;
    let (_, tbs, _) = der_next(certificate)?;
    let mut fields = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, rest) = der_next(fields)?;
    if tag == 0xa0 {
        fields = rest;
    }
    for _ in 0..4 {
        fields = der_next(fields)?.2;
    }
    let (_, mut rdns, _) = der_next(fields)?;
    let mut names = Vec::new();
    while !rdns.is_empty() {
        let (_, mut set, rest) = der_next(rdns)?;
        rdns = rest;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (_, attribute, rest) = der_next(set)?;
            set = rest;
            let (_, oid, value) = der_next(attribute)?;
            let (vtag, value, _) = der_next(value)?;
            let key = match oid {
                [0x55, 0x04, 3] => "CN".to_string(),
                [0x55, 0x04, 6] => "C".into(),
                [0x55, 0x04, 7] => "L".into(),
                [0x55, 0x04, 8] => "ST".into(),
                [0x55, 0x04, 9] => "STREET".into(),
                [0x55, 0x04, 10] => "O".into(),
                [0x55, 0x04, 11] => "OU".into(),
                [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
                [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
                other => other.iter().map(|b| format!("{b:02x}")).collect(),
            };
            // UTF8String, PrintableString, IA5String, TeletexString: text; others hex.
            let text = if matches!(vtag, 0x0c | 0x13 | 0x16 | 0x14) {
                escape(&String::from_utf8_lossy(value))
            } else {
                format!(
                    "#{}",
                    value.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            };
            parts.push(format!("{key}={text}"));
        }
        names.push(parts.join("+"));
    }
    names.reverse();
    Some(names.join(","))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
