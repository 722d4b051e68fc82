//! DescribeUserScramCredentials (API 50) and AlterUserScramCredentials (API 51): the SCRAM
//! users of [`crate::security::scram::ScramStore`], with Kafka's per-user errors.

use std::collections::{HashMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use super::sb;
use crate::broker::Broker;
use crate::security::scram::{
    ScramChange, ScramCredential, ScramMechanism, MAX_ITERATIONS, MIN_ITERATIONS,
};

pub fn describe(
    broker: &Broker,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let all = broker.users.scram.list();
    let info = |infos: &[(ScramMechanism, i32)]| {
        infos
            .iter()
            .map(|&(m, iterations)| {
                CredentialInfo::default()
                    .with_mechanism(m.code())
                    .with_iterations(iterations)
            })
            .collect()
    };
    let mut resp = DescribeUserScramCredentialsResponse::default();
    match req.users.filter(|u| !u.is_empty()) {
        None => {
            resp.results = all
                .iter()
                .map(|(user, infos)| {
                    DescribeUserScramCredentialsResult::default()
                        .with_user(sb(user))
                        .with_credential_infos(info(infos))
                })
                .collect();
        }
        Some(users) => {
            let mut count: HashMap<&str, usize> = HashMap::new();
            for u in &users {
                *count.entry(u.name.as_str()).or_default() += 1;
            }
            let mut seen = HashSet::new();
            for u in &users {
                let name = u.name.as_str();
                if !seen.insert(name) {
                    continue;
                }
                let mut result = DescribeUserScramCredentialsResult::default().with_user(sb(name));
                if count[name] > 1 {
                    result.error_code = ResponseError::DuplicateResource.code();
                    result.error_message = Some(sb(format!(
                        "Cannot describe SCRAM credentials for the same user twice in a single request: {name}"
                    )));
                } else if let Some((_, infos)) = all.iter().find(|(user, _)| user == name) {
                    result.credential_infos = info(infos);
                } else {
                    result.error_code = ResponseError::ResourceNotFound.code();
                    result.error_message =
                        Some(sb(format!("Attempt to describe nonexistent user {name}")));
                }
                resp.results.push(result);
            }
        }
    }
    resp
}

/// The mechanism of one alteration of `user`'s credentials, unless it is unknown or the
/// request already alters the same (user, mechanism).
fn first_change(
    touched: &mut HashSet<(String, i8)>,
    user: &str,
    mechanism: i8,
) -> Result<ScramMechanism, (ResponseError, String)> {
    let Some(m) = ScramMechanism::from_code(mechanism) else {
        return Err((
            ResponseError::UnsupportedSaslMechanism,
            format!("Unknown SCRAM mechanism {mechanism}"),
        ));
    };
    if !touched.insert((user.to_string(), mechanism)) {
        return Err((
            ResponseError::DuplicateResource,
            format!("A user credential cannot be altered twice in the same request: {user}"),
        ));
    }
    Ok(m)
}

pub fn alter(
    broker: &Broker,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    // Per user, in request order: the first error, or the changes to apply.
    let mut order: Vec<String> = Vec::new();
    let mut errors: HashMap<String, (ResponseError, String)> = HashMap::new();
    let mut changes: HashMap<String, Vec<ScramChange>> = HashMap::new();
    let mut touched: HashSet<(String, i8)> = HashSet::new();
    let existing = broker.users.scram.list();
    let mut note = |user: &str| {
        if !order.iter().any(|u| u == user) {
            order.push(user.to_string());
        }
    };
    let fail = |errors: &mut HashMap<String, (ResponseError, String)>,
                user: &str,
                code: ResponseError,
                message: String| {
        errors.entry(user.to_string()).or_insert((code, message));
    };
    for d in &req.deletions {
        let user = d.name.as_str();
        note(user);
        let m = match first_change(&mut touched, user, d.mechanism) {
            Ok(m) => m,
            Err((code, message)) => {
                fail(&mut errors, user, code, message);
                continue;
            }
        };
        let exists = existing
            .iter()
            .any(|(u, infos)| u == user && infos.iter().any(|(im, _)| *im == m));
        if !exists {
            fail(
                &mut errors,
                user,
                ResponseError::ResourceNotFound,
                format!(
                    "Attempt to delete a user credential that does not exist: {user} {}",
                    m.name()
                ),
            );
            continue;
        }
        changes
            .entry(user.to_string())
            .or_default()
            .push(ScramChange::Delete(user.to_string(), m));
    }
    for u in &req.upsertions {
        let user = u.name.as_str();
        note(user);
        if user.is_empty() {
            fail(
                &mut errors,
                user,
                ResponseError::UnacceptableCredential,
                "Username must not be empty".into(),
            );
            continue;
        }
        let m = match first_change(&mut touched, user, u.mechanism) {
            Ok(m) => m,
            Err((code, message)) => {
                fail(&mut errors, user, code, message);
                continue;
            }
        };
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&u.iterations) {
            fail(
                &mut errors,
                user,
                ResponseError::UnacceptableCredential,
                format!(
                    "Iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, not {}",
                    u.iterations
                ),
            );
            continue;
        }
        if u.salt.is_empty() || u.salted_password.is_empty() {
            fail(
                &mut errors,
                user,
                ResponseError::UnacceptableCredential,
                "Salt and salted password must not be empty".into(),
            );
            continue;
        }
        let credential = ScramCredential::from_salted_password(
            m,
            u.salt.to_vec(),
            &u.salted_password,
            u.iterations,
        );
        changes
            .entry(user.to_string())
            .or_default()
            .push(ScramChange::Upsert(user.to_string(), m, credential));
    }
    // Users without an error change all at once, in one durable write.
    let ok: Vec<ScramChange> = order
        .iter()
        .filter(|u| !errors.contains_key(*u))
        .flat_map(|u| changes.remove(u).unwrap_or_default())
        .collect();
    let write_error = if ok.is_empty() {
        None
    } else {
        broker.users.scram.apply(ok).err()
    };
    if let Some(e) = &write_error {
        tracing::error!(error = %e, "writing the SCRAM credentials failed");
    }
    let mut resp = AlterUserScramCredentialsResponse::default();
    resp.results = order
        .iter()
        .map(|user| {
            let mut r = AlterUserScramCredentialsResult::default().with_user(sb(user));
            if let Some((code, message)) = errors.get(user) {
                r.error_code = code.code();
                r.error_message = Some(sb(message));
            } else if write_error.is_some() {
                r.error_code = ResponseError::UnknownServerError.code();
                r.error_message = Some(sb("writing the credentials failed"));
            }
            r
        })
        .collect();
    resp
}
