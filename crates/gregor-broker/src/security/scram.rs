//! SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677): credentials, the server side of the
//! exchange, and the credential store.
//!
//! A credential is what Kafka keeps: salt, iterations, StoredKey = H(HMAC(SaltedPassword,
//! "Client Key")) and ServerKey = HMAC(SaltedPassword, "Server Key"); never the password.
//! The store is one JSON file, `<data-dir>/__scram_credentials.json`, replaced atomically
//! (write, fsync, rename, fsync the directory) on every change. It is per broker: in a
//! cluster each broker keeps its own (not yet in the metadata log).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// Kafka's bounds on SCRAM iterations.
pub const MIN_ITERATIONS: i32 = 4096;
pub const MAX_ITERATIONS: i32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The code of DescribeUserScramCredentials / AlterUserScramCredentials.
    pub fn code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_code(code: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.code() == code)
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// Hi(password, salt, i) of RFC 5802: PBKDF2 with this mechanism's HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// Random bytes from the TLS provider's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    super::tls::provider()
        .secure_random
        .fill(&mut buf)
        .expect("the system random generator works");
    buf
}

/// Byte comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

/// What the broker keeps of a SCRAM password.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScramCredential {
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    #[serde(with = "b64")]
    pub stored_key: Vec<u8>,
    #[serde(with = "b64")]
    pub server_key: Vec<u8>,
    pub iterations: i32,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScramCredential(iterations={}, ..)", self.iterations)
    }
}

impl ScramCredential {
    /// From the salted password AlterUserScramCredentials carries.
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salt: Vec<u8>,
        salted_password: &[u8],
        iterations: i32,
    ) -> ScramCredential {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        ScramCredential {
            salt,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
            iterations,
        }
    }

    /// From a password, with a fresh random salt.
    pub fn from_password(
        mechanism: ScramMechanism,
        password: &str,
        iterations: i32,
    ) -> ScramCredential {
        let salt = random_bytes(32);
        let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations as u32);
        ScramCredential::from_salted_password(mechanism, salt, &salted, iterations)
    }

    /// Whether `password` is this credential's password (used by PLAIN for SCRAM users).
    pub fn matches_password(&self, mechanism: ScramMechanism, password: &str) -> bool {
        let salted =
            mechanism.salted_password(password.as_bytes(), &self.salt, self.iterations as u32);
        let other = ScramCredential::from_salted_password(
            mechanism,
            self.salt.clone(),
            &salted,
            self.iterations,
        );
        constant_time_eq(&other.stored_key, &self.stored_key)
    }
}

/// The result of one step of a SASL exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated as `user`; send `reply` (the server-final message for SCRAM).
    Done { user: String, reply: Vec<u8> },
    /// Authentication failed; the reason is safe to log and to send (no secrets).
    Failed(&'static str),
}

/// The server side of one SCRAM exchange.
pub struct ScramServer {
    mechanism: ScramMechanism,
    state: ScramState,
}

enum ScramState {
    Initial,
    ServerFirstSent {
        user: String,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        /// A made-up credential for an unknown user, so that the exchange fails only at the
        /// proof, as for a wrong password (no user enumeration).
        credential: ScramCredential,
    },
    Finished,
}

/// `saslname` of RFC 5802: `=2C` is `,` and `=3D` is `=`.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism) -> ScramServer {
        ScramServer {
            mechanism,
            state: ScramState::Initial,
        }
    }

    /// Takes the client's next message; `lookup` finds a user's credential.
    pub fn step(&mut self, input: &[u8], lookup: impl Fn(&str) -> Option<ScramCredential>) -> Step {
        let Ok(input) = std::str::from_utf8(input) else {
            self.state = ScramState::Finished;
            return Step::Failed("SCRAM message is not UTF-8");
        };
        match std::mem::replace(&mut self.state, ScramState::Finished) {
            ScramState::Initial => self.client_first(input, lookup),
            ScramState::ServerFirstSent {
                user,
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
                credential,
            } => {
                let Some((without_proof, proof)) = input.rsplit_once(",p=") else {
                    return Step::Failed("invalid SCRAM client-final message");
                };
                let mut attrs = without_proof.split(',');
                let channel = attrs.next().and_then(|c| c.strip_prefix("c="));
                let client_nonce = attrs.next().and_then(|r| r.strip_prefix("r="));
                if channel.and_then(|c| B64.decode(c).ok()) != Some(gs2_header.into_bytes()) {
                    return Step::Failed("invalid SCRAM channel binding");
                }
                if client_nonce != Some(nonce.as_str()) {
                    return Step::Failed("invalid SCRAM nonce");
                }
                let Ok(proof) = B64.decode(proof) else {
                    return Step::Failed("invalid SCRAM proof");
                };
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let m = self.mechanism;
                let client_signature = m.hmac(&credential.stored_key, auth_message.as_bytes());
                if proof.len() != client_signature.len() {
                    return Step::Failed("Authentication failed: invalid credentials");
                }
                let client_key: Vec<u8> = proof
                    .iter()
                    .zip(&client_signature)
                    .map(|(a, b)| a ^ b)
                    .collect();
                if !constant_time_eq(&m.hash(&client_key), &credential.stored_key) {
                    return Step::Failed("Authentication failed: invalid credentials");
                }
                let server_signature = m.hmac(&credential.server_key, auth_message.as_bytes());
                Step::Done {
                    user,
                    reply: format!("v={}", B64.encode(server_signature)).into_bytes(),
                }
            }
            ScramState::Finished => Step::Failed("SCRAM exchange already finished"),
        }
    }

    fn client_first(
        &mut self,
        input: &str,
        lookup: impl Fn(&str) -> Option<ScramCredential>,
    ) -> Step {
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = input.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Step::Failed("invalid SCRAM client-first message");
        };
        if cbind != "n" && cbind != "y" {
            return Step::Failed("SCRAM channel binding is not supported");
        }
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .and_then(|n| n.strip_prefix("n="))
            .and_then(decode_saslname);
        let client_nonce = attrs.next().and_then(|r| r.strip_prefix("r="));
        let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
            return Step::Failed("invalid SCRAM client-first message");
        };
        if user.is_empty() || client_nonce.is_empty() {
            return Step::Failed("invalid SCRAM client-first message");
        }
        if !authzid.is_empty()
            && authzid.strip_prefix("a=").and_then(decode_saslname) != Some(user.clone())
        {
            return Step::Failed("SCRAM authorization id differs from the user name");
        }
        let credential = lookup(&user).unwrap_or_else(|| ScramCredential {
            salt: random_bytes(32),
            stored_key: random_bytes(64),
            server_key: random_bytes(64),
            iterations: MIN_ITERATIONS,
        });
        let nonce = format!("{client_nonce}{}", B64.encode(random_bytes(18)));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        self.state = ScramState::ServerFirstSent {
            user,
            gs2_header: format!("{cbind},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            credential,
        };
        Step::Continue(server_first.into_bytes())
    }
}

/// Every user's SCRAM credentials, one per mechanism, kept in a JSON file.
pub struct ScramStore {
    path: Option<PathBuf>,
    users: RwLock<BTreeMap<String, BTreeMap<String, ScramCredential>>>,
}

#[derive(Serialize, Deserialize, Default)]
struct StoreFile {
    users: BTreeMap<String, BTreeMap<String, ScramCredential>>,
}

/// One change of AlterUserScramCredentials.
pub enum ScramChange {
    Upsert(String, ScramMechanism, ScramCredential),
    Delete(String, ScramMechanism),
}

impl ScramStore {
    pub const FILE: &'static str = "__scram_credentials.json";

    /// A store that lives only in memory (tests, tools).
    pub fn in_memory() -> ScramStore {
        ScramStore {
            path: None,
            users: RwLock::new(BTreeMap::new()),
        }
    }

    /// Opens (or starts) the store of `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<ScramStore> {
        let path = data_dir.join(ScramStore::FILE);
        let file: StoreFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile::default(),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        Ok(ScramStore {
            path: Some(path),
            users: RwLock::new(file.users),
        })
    }

    pub fn get(&self, user: &str, mechanism: ScramMechanism) -> Option<ScramCredential> {
        let users = self.users.read().expect("scram store lock");
        users.get(user)?.get(mechanism.name()).cloned()
    }

    /// Every user with the (mechanism, iterations) of each credential.
    pub fn list(&self) -> Vec<(String, Vec<(ScramMechanism, i32)>)> {
        let users = self.users.read().expect("scram store lock");
        users
            .iter()
            .map(|(u, creds)| {
                let infos = creds
                    .iter()
                    .filter_map(|(m, c)| Some((ScramMechanism::from_name(m)?, c.iterations)))
                    .collect();
                (u.clone(), infos)
            })
            .collect()
    }

    /// Applies `changes` and writes the store; on a write error nothing changes.
    pub fn apply(&self, changes: Vec<ScramChange>) -> std::io::Result<()> {
        let mut users = self.users.write().expect("scram store lock");
        let mut next = users.clone();
        for change in changes {
            match change {
                ScramChange::Upsert(user, m, c) => {
                    next.entry(user).or_default().insert(m.name().into(), c);
                }
                ScramChange::Delete(user, m) => {
                    if let Some(creds) = next.get_mut(&user) {
                        creds.remove(m.name());
                        if creds.is_empty() {
                            next.remove(&user);
                        }
                    }
                }
            }
        }
        if let Some(path) = &self.path {
            let file = StoreFile { users: next };
            let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
            gregor_os::fs::replace_file(path, &bytes)?;
            next = file.users;
        }
        *users = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side of RFC 5802, to drive the server in tests.
    fn client_proof(
        m: ScramMechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        without_proof: &str,
    ) -> (String, Vec<u8>) {
        let attrs: BTreeMap<&str, &str> = server_first
            .split(',')
            .filter_map(|a| a.split_once('='))
            .collect();
        let salt = B64.decode(attrs["s"]).unwrap();
        let i: u32 = attrs["i"].parse().unwrap();
        let salted = m.salted_password(password.as_bytes(), &salt, i);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = m.hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_key = m.hmac(&salted, b"Server Key");
        (B64.encode(proof), m.hmac(&server_key, auth.as_bytes()))
    }

    fn exchange(m: ScramMechanism, stored: &str, tried: &str) -> Step {
        let cred = ScramCredential::from_password(m, stored, 4096);
        let lookup = |u: &str| (u == "alice").then(|| cred.clone());
        let mut server = ScramServer::new(m);
        let bare = "n=alice,r=fyko+d2lbbFgONRv9qkxdawL";
        let Step::Continue(first) = server.step(format!("n,,{bare}").as_bytes(), lookup) else {
            panic!("no server-first");
        };
        let first = String::from_utf8(first).unwrap();
        let nonce = first.split(',').next().unwrap().strip_prefix("r=").unwrap();
        assert!(nonce.starts_with("fyko+d2lbbFgONRv9qkxdawL"));
        let without_proof = format!("c=biws,r={nonce}");
        let (proof, server_sig) = client_proof(m, tried, bare, &first, &without_proof);
        let step = server.step(format!("{without_proof},p={proof}").as_bytes(), lookup);
        if let Step::Done { reply, .. } = &step {
            assert_eq!(reply, &format!("v={}", B64.encode(server_sig)).into_bytes());
        }
        step
    }

    #[test]
    fn scram_accepts_the_right_password_and_refuses_a_wrong_one() {
        for m in ScramMechanism::ALL {
            assert!(matches!(exchange(m, "pw", "pw"), Step::Done { user, .. } if user == "alice"));
            assert!(matches!(exchange(m, "pw", "wrong"), Step::Failed(_)));
        }
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let m = ScramMechanism::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = m.salted_password(b"pencil", &salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let (proof, server_sig) =
            client_proof(m, "pencil", client_first_bare, server_first, without_proof);
        assert_eq!(proof, "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(
            B64.encode(server_sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let cred = ScramCredential::from_salted_password(m, salt, &salted, 4096);
        assert!(cred.matches_password(m, "pencil"));
        assert!(!cred.matches_password(m, "pencil2"));
    }

    #[test]
    fn unknown_users_fail_at_the_proof_and_names_decode() {
        assert!(matches!(
            exchange(ScramMechanism::Sha512, "pw", "pw"),
            Step::Done { .. }
        ));
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        assert!(matches!(
            server.step(b"n,,n=bob,r=abc", |_| None),
            Step::Continue(_)
        ));
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("a=x"), None);
    }

    #[test]
    fn store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ScramStore::open(dir.path()).unwrap();
        let c = ScramCredential::from_password(ScramMechanism::Sha256, "pw", 4096);
        store
            .apply(vec![ScramChange::Upsert(
                "u".into(),
                ScramMechanism::Sha256,
                c.clone(),
            )])
            .unwrap();
        let again = ScramStore::open(dir.path()).unwrap();
        assert_eq!(again.get("u", ScramMechanism::Sha256), Some(c));
        again
            .apply(vec![ScramChange::Delete(
                "u".into(),
                ScramMechanism::Sha256,
            )])
            .unwrap();
        assert!(ScramStore::open(dir.path()).unwrap().list().is_empty());
    }
}
