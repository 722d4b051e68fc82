//! The client's error type.

use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;

/// A Kafka error code as returned by a broker (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaCode(pub i16);

impl KafkaCode {
    /// `None` for 0 (no error), the code otherwise.
    pub fn from_code(code: i16) -> Option<KafkaCode> {
        (code != 0).then_some(KafkaCode(code))
    }

    /// Whether the protocol defines this error as retriable.
    pub fn is_retriable(self) -> bool {
        ResponseError::try_from_code(self.0).is_some_and(|e| e.is_retriable())
    }

    /// The symbolic name, e.g. `UnknownTopicOrPartition`.
    pub fn name(self) -> String {
        match ResponseError::try_from_code(self.0) {
            Some(ResponseError::Unknown(_)) | None => format!("UnknownErrorCode({c})", c = self.0),
            Some(e) => format!("{e:?}"),
        }
    }
}

impl std::fmt::Display for KafkaCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (error code {})", self.name(), self.0)
    }
}

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No bootstrap broker or broker could be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// An established connection failed or was closed by the broker.
    #[error("connection to {0} lost")]
    Disconnected(String),
    /// A request got no answer in time.
    #[error("request {api:?} to {addr} timed out after {after:?}")]
    Timeout {
        /// API of the request.
        api: ApiKey,
        /// Broker address.
        addr: String,
        /// Configured timeout.
        after: Duration,
    },
    /// The broker sent bytes the client could not make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker implements none of the versions of an API this client speaks.
    #[error("broker {addr} does not support {api:?} (needed for this operation)")]
    Unsupported {
        /// The API.
        api: ApiKey,
        /// Broker address.
        addr: String,
    },
    /// The broker answered with an error code.
    #[error("{context}: {code}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        /// The code.
        code: KafkaCode,
        /// What the client was doing.
        context: String,
        /// The broker's error message, if it sent one.
        message: Option<String>,
    },
    /// The topic does not exist.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The partition does not exist.
    #[error("unknown partition {topic}/{partition}")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// Invalid configuration or argument.
    #[error("{0}")]
    Config(String),
    /// The producer or consumer was closed.
    #[error("client closed")]
    Closed,
    /// A send waited `max.block.ms` for `buffer.memory` (records sent but not yet
    /// acknowledged) and none was freed, or the record alone is larger than all of it.
    #[error("producer buffer exhausted: {0}")]
    BufferExhausted(String),
}

impl Error {
    /// Build a [`Error::Kafka`] from a non-zero code.
    pub fn kafka(code: i16, context: impl Into<String>, message: Option<String>) -> Error {
        Error::Kafka {
            code: KafkaCode(code),
            context: context.into(),
            message,
        }
    }

    /// Whether retrying the operation (after a metadata refresh) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Disconnected(_) | Error::Timeout { .. } => true,
            Error::Kafka { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// The Kafka error code, if this is a broker error.
    pub fn code(&self) -> Option<i16> {
        match self {
            Error::Kafka { code, .. } => Some(code.0),
            _ => None,
        }
    }
}

/// Turn a non-zero code into an error.
pub(crate) fn check(code: i16, context: impl FnOnce() -> String) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::kafka(code, context(), None))
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
