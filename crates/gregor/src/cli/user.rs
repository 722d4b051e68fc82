//! `gregor user create|delete|list`: SCRAM users through AlterUserScramCredentials /
//! DescribeUserScramCredentials (as Kafka's `kafka-configs --alter --add-config
//! 'SCRAM-SHA-256=[password=...]' --entity-type users`). The salt is made here and only the
//! salted password travels; the broker keeps StoredKey / ServerKey.

use anyhow::Context;
use bytes::Bytes;
use gregor_broker::security::scram::{random_bytes, ScramMechanism};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::json;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum UserCmd {
    /// Create a SCRAM user (or change its password).
    Create {
        name: String,
        /// The password; without it, read from the environment variable GREGOR_PASSWORD.
        #[arg(long, env = "GREGOR_PASSWORD", hide_env_values = true)]
        password: String,
        /// SCRAM-SHA-256, SCRAM-SHA-512, or both (comma-separated). Default both.
        #[arg(long, default_value = "SCRAM-SHA-256,SCRAM-SHA-512")]
        mechanism: String,
        /// PBKDF2 iterations (4096..16384).
        #[arg(long, default_value_t = 8192)]
        iterations: i32,
    },
    /// Delete a user's SCRAM credentials (every mechanism it has, or --mechanism).
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// List SCRAM users with their mechanisms and iterations.
    List,
}

fn mechanisms(list: &str) -> anyhow::Result<Vec<ScramMechanism>> {
    list.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            ScramMechanism::from_name(m)
                .with_context(|| format!("unknown mechanism {m} (SCRAM-SHA-256, SCRAM-SHA-512)"))
        })
        .collect()
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub async fn run(global: &Global, cmd: UserCmd) -> anyhow::Result<()> {
    let json = global.json()?;
    let client = global.client().await?;
    match cmd {
        UserCmd::Create {
            name,
            password,
            mechanism,
            iterations,
        } => {
            let mut req = AlterUserScramCredentialsRequest::default();
            for m in mechanisms(&mechanism)? {
                let salt = random_bytes(32);
                let salted =
                    m.salted_password(password.as_bytes(), &salt, iterations.max(0) as u32);
                req.upsertions.push(
                    ScramCredentialUpsertion::default()
                        .with_name(sb(&name))
                        .with_mechanism(m.code())
                        .with_iterations(iterations)
                        .with_salt(Bytes::from(salt))
                        .with_salted_password(Bytes::from(salted)),
                );
            }
            let resp = client.send_any(&req).await?;
            report(json, "created", &name, &resp.results)
        }
        UserCmd::Delete { name, mechanism } => {
            let which = match mechanism {
                Some(m) => mechanisms(&m)?,
                None => {
                    let req = DescribeUserScramCredentialsRequest::default()
                        .with_users(Some(vec![UserName::default().with_name(sb(&name))]));
                    let resp = client.send_any(&req).await?;
                    let result = resp.results.first().context("empty response")?;
                    if result.error_code != 0 {
                        anyhow::bail!(
                            "{}: {}",
                            gregor_client::error::KafkaCode(result.error_code).name(),
                            result.error_message.as_deref().unwrap_or("")
                        );
                    }
                    result
                        .credential_infos
                        .iter()
                        .filter_map(|c| ScramMechanism::from_code(c.mechanism))
                        .collect()
                }
            };
            let req = AlterUserScramCredentialsRequest::default().with_deletions(
                which
                    .into_iter()
                    .map(|m| {
                        ScramCredentialDeletion::default()
                            .with_name(sb(&name))
                            .with_mechanism(m.code())
                    })
                    .collect(),
            );
            let resp = client.send_any(&req).await?;
            report(json, "deleted", &name, &resp.results)
        }
        UserCmd::List => {
            let resp = client
                .send_any(&DescribeUserScramCredentialsRequest::default())
                .await?;
            if resp.error_code != 0 {
                anyhow::bail!(
                    "{}",
                    gregor_client::error::KafkaCode(resp.error_code).name()
                );
            }
            let users: Vec<_> = resp
                .results
                .iter()
                .map(|r| {
                    let creds: Vec<_> = r
                        .credential_infos
                        .iter()
                        .map(|c| {
                            let m = ScramMechanism::from_code(c.mechanism)
                                .map(|m| m.name().to_string())
                                .unwrap_or_else(|| format!("mechanism-{}", c.mechanism));
                            (m, c.iterations)
                        })
                        .collect();
                    (r.user.to_string(), creds)
                })
                .collect();
            if json {
                super::print_json(&json!({"users": users.iter().map(|(u, c)| json!({
                    "name": u,
                    "credentials": c.iter().map(|(m, i)| json!({"mechanism": m, "iterations": i})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()}));
            } else {
                for (u, creds) in users {
                    let c: Vec<String> = creds
                        .iter()
                        .map(|(m, i)| format!("{m}(iterations={i})"))
                        .collect();
                    println!("{u}\t{}", c.join(","));
                }
            }
            Ok(())
        }
    }
}

fn report(
    json: bool,
    what: &str,
    name: &str,
    results: &[kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult],
) -> anyhow::Result<()> {
    let failed = results.iter().find(|r| r.error_code != 0);
    if let Some(r) = failed {
        anyhow::bail!(
            "{}: {}",
            gregor_client::error::KafkaCode(r.error_code).name(),
            r.error_message.as_deref().unwrap_or("")
        );
    }
    if json {
        super::print_json(&json!({"user": name, "result": what}));
    } else {
        println!("user {name}: {what}");
    }
    Ok(())
}
