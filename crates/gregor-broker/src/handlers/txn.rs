//! Transaction APIs: InitProducerId with a transactional id, AddPartitionsToTxn (v0–3),
//! AddOffsetsToTxn, EndTxn and TxnOffsetCommit. The protocol logic is `gregor_txn`'s
//! coordinator; the I/O is [`crate::transactions`]. Every state change is durable before it
//! is acknowledged.

use std::sync::Arc;

use gregor_group::{CommitPartition, TxnCommitRequest};
use gregor_txn::{InitOutcome, TxnError};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};

use crate::broker::Broker;
use crate::internal_topics::OFFSETS_TOPIC;
use crate::internal_topics::TXN_TOPIC;
use crate::transactions::{TransactionService, WriteError, Written};
use gregor_txn::txn_partition;

/// Kafka's error code for a coordinator error; PRODUCER_FENCED only from the version that
/// introduced it (KIP-588), INVALID_PRODUCER_EPOCH before.
pub fn txn_error(e: TxnError, version: i16, fenced_since: i16) -> ResponseError {
    match e {
        TxnError::LoadInProgress => ResponseError::CoordinatorLoadInProgress,
        TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
        TxnError::ProducerFenced if version >= fenced_since => ResponseError::ProducerFenced,
        TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
        TxnError::InvalidTxnState => ResponseError::InvalidTxnState,
        TxnError::InvalidTransactionTimeout => ResponseError::InvalidTransactionTimeout,
        TxnError::Unavailable => ResponseError::CoordinatorNotAvailable,
    }
}

/// The transaction coordinator, if this broker coordinates `transactional_id`: in a cluster,
/// the one that leads its partition of `__transaction_state` (NOT_COORDINATOR elsewhere).
fn service<'a>(
    broker: &'a Broker,
    transactional_id: &str,
) -> Result<&'a Arc<TransactionService>, ResponseError> {
    let svc = broker
        .txns()
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    if let Some(topic) = broker.cluster().and_then(|_| broker.topic(TXN_TOPIC)) {
        let partition = txn_partition(transactional_id, topic.partitions.len() as i32);
        if broker.check_leader(TXN_TOPIC, partition).is_err() {
            return Err(ResponseError::NotCoordinator);
        }
    }
    Ok(svc)
}

/// Makes a change's records durable and commits its transitions. A failed append or fsync
/// rolls the transition back (the transactional id keeps its previous state) and answers as
/// Kafka's `TransactionStateManager` maps failed transaction log appends: a storage error
/// NOT_COORDINATOR, a missing partition COORDINATOR_NOT_AVAILABLE. Clients retry both.
async fn persist(svc: &TransactionService, written: Vec<Written>) -> Result<(), ResponseError> {
    svc.persist(written).await.map_err(|e| {
        tracing::error!(error = %e, "writing {} failed", crate::internal_topics::TXN_TOPIC);
        match e {
            WriteError::Unavailable(_) => ResponseError::CoordinatorNotAvailable,
            WriteError::Storage(_) => ResponseError::NotCoordinator,
        }
    })
}

// ------------------------------------------------------------------ InitProducerId

pub async fn init_producer_id(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match init(broker, &req, version).await {
        Ok((id, epoch)) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = epoch;
        }
        Err(e) => resp.error_code = e.code(),
    }
    resp
}

async fn init(
    broker: &Arc<Broker>,
    req: &InitProducerIdRequest,
    version: i16,
) -> Result<(i64, i16), ResponseError> {
    let svc = service(
        broker,
        req.transactional_id.as_ref().map_or("", |s| s.as_str()),
    )?;
    let id = req
        .transactional_id
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    if id.is_empty() || id.len() > i16::MAX as usize {
        return Err(ResponseError::InvalidRequest);
    }
    let mut expected =
        (version >= 3 && req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    // At most one fencing abort, then a fresh answer.
    for _ in 0..3 {
        let (outcome, written) = svc.change(|co| {
            match co.init_producer_id(
                broker.now_ms(),
                &id,
                req.transaction_timeout_ms,
                expected,
                &mut || broker.allocate_producer_id().ok(),
            ) {
                Ok(InitOutcome::Ready {
                    producer_id,
                    producer_epoch,
                    transition,
                }) => (Ok(Ok((producer_id, producer_epoch))), vec![transition]),
                Ok(InitOutcome::AbortFirst { job, transition }) => (Ok(Err(job)), vec![transition]),
                Err(e) => (Err(e), vec![]),
            }
        });
        let outcome = outcome.map_err(|e| txn_error(e, version, 4))?;
        persist(svc, written).await?;
        match outcome {
            Ok((producer_id, producer_epoch)) => {
                tracing::debug!(transactional_id = %id, producer_id, producer_epoch, "InitProducerId");
                return Ok((producer_id, producer_epoch));
            }
            Err(job) => {
                tracing::info!(transactional_id = %id, producer_id = job.producer_id, "fencing the previous producer: aborting its transaction");
                svc.complete_job(&job).await.map_err(|e| {
                    tracing::error!(error = %e, "aborting a fenced transaction failed");
                    ResponseError::ConcurrentTransactions
                })?;
                expected = None;
            }
        }
    }
    Err(ResponseError::ConcurrentTransactions)
}

// -------------------------------------------------------------- AddPartitionsToTxn

pub async fn add_partitions_to_txn(
    broker: &Arc<Broker>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let mut partitions = Vec::new();
    let mut unknown = Vec::new();
    for t in &req.v3_and_below_topics {
        let topic = broker.topic(&t.name);
        for &p in &t.partitions {
            if topic.as_ref().is_some_and(|tp| tp.partition(p).is_some()) {
                partitions.push((t.name.to_string(), p));
            } else {
                unknown.push((t.name.to_string(), p));
            }
        }
    }
    let outcome: Result<(), ResponseError> = if !unknown.is_empty() {
        Err(ResponseError::OperationNotAttempted)
    } else {
        add(
            broker,
            &req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            &partitions,
            version,
            2,
        )
        .await
    };
    let results = req
        .v3_and_below_topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            let code = if unknown.contains(&(t.name.to_string(), p)) {
                                ResponseError::UnknownTopicOrPartition.code()
                            } else {
                                outcome.err().map_or(0, |e| e.code())
                            };
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

async fn add(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    version: i16,
    fenced_since: i16,
) -> Result<(), ResponseError> {
    let svc = service(broker, transactional_id)?;
    let (result, written) = svc.change(|co| {
        match co.add_partitions(
            broker.now_ms(),
            transactional_id,
            producer_id,
            epoch,
            partitions,
        ) {
            Ok(t) => (Ok(()), t.into_iter().collect()),
            Err(e) => (Err(e), vec![]),
        }
    });
    result.map_err(|e| txn_error(e, version, fenced_since))?;
    persist(svc, written).await
}

// ----------------------------------------------------------------- AddOffsetsToTxn

pub async fn add_offsets_to_txn(
    broker: &Arc<Broker>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let result = match broker.groups() {
        None => Err(ResponseError::CoordinatorNotAvailable),
        Some(groups) => {
            let partition = groups.partition_for(&req.group_id);
            add(
                broker,
                &req.transactional_id,
                req.producer_id.0,
                req.producer_epoch,
                &[(OFFSETS_TOPIC.to_string(), partition)],
                version,
                2,
            )
            .await
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(result.err().map_or(0, |e| e.code()))
}

// -------------------------------------------------------------------------- EndTxn

pub async fn end_txn(broker: &Arc<Broker>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let result = end(broker, &req, version).await;
    let mut resp = EndTxnResponse::default().with_error_code(result.err().map_or(0, |e| e.code()));
    if version >= 5 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch;
    }
    resp
}

async fn end(broker: &Arc<Broker>, req: &EndTxnRequest, version: i16) -> Result<(), ResponseError> {
    let svc = service(broker, req.transactional_id.as_str())?;
    let (result, written) = svc.change(|co| {
        match co.end_txn(
            broker.now_ms(),
            &req.transactional_id,
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
        ) {
            Ok(Some((job, t))) => (Ok(Some(job)), vec![t]),
            Ok(None) => (Ok(None), vec![]),
            Err(e) => (Err(e), vec![]),
        }
    });
    let Some(job) = result.map_err(|e| txn_error(e, version, 2))? else {
        return Ok(());
    };
    persist(svc, written).await?;
    svc.complete_job(&job).await.map_err(|e| {
        tracing::error!(transactional_id = %job.transactional_id, error = %e, "writing transaction markers failed");
        ResponseError::ConcurrentTransactions
    })
}

// ----------------------------------------------------------------- TxnOffsetCommit

pub async fn txn_offset_commit(
    broker: &Arc<Broker>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let mut commit = TxnCommitRequest {
        group_id: req.group_id.to_string(),
        producer_id: req.producer_id.0,
        generation_id: if version >= 3 { req.generation_id } else { -1 },
        member_id: if version >= 3 {
            req.member_id.to_string()
        } else {
            String::new()
        },
        group_instance_id: if version >= 3 {
            req.group_instance_id.as_ref().map(|s| s.to_string())
        } else {
            None
        },
        partitions: vec![],
    };
    let mut known = Vec::new();
    for t in &req.topics {
        let topic = broker.topic(&t.name);
        for p in &t.partitions {
            let exists = topic
                .as_ref()
                .is_some_and(|tp| tp.partition(p.partition_index).is_some());
            known.push(exists);
            if exists {
                commit.partitions.push(CommitPartition {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 2 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|s| s.to_string()),
                });
            }
        }
    }
    let outcome = txn_commit(broker, &req, &commit, version).await;
    let mut codes = outcome.as_ref().ok().map(|c| c.iter());
    let mut known = known.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let code = if !known.next().unwrap_or(false) {
                                ResponseError::UnknownTopicOrPartition.code()
                            } else {
                                match (&outcome, codes.as_mut()) {
                                    (Err(e), _) => e.code(),
                                    (Ok(_), Some(it)) => it.next().copied().unwrap_or(0),
                                    (Ok(_), None) => 0,
                                }
                            };
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

async fn txn_commit(
    broker: &Arc<Broker>,
    req: &TxnOffsetCommitRequest,
    commit: &TxnCommitRequest,
    version: i16,
) -> Result<Vec<i16>, ResponseError> {
    // Sent to the group's coordinator, which may not be the transaction's.
    let groups = super::group::coordinator(broker, &commit.group_id)?;
    let txns = broker
        .txns()
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    // The offsets partition must have been added (AddOffsetsToTxn) to the producer's
    // ongoing transaction; verified when this broker also coordinates the transaction
    // (another broker's coordinator is not asked, as in Kafka before KIP-890).
    let partition = groups.partition_for(&commit.group_id);
    if txns.coordinates(req.transactional_id.as_str()) {
        txns.verify_write(
            req.producer_id.0,
            req.producer_epoch,
            OFFSETS_TOPIC,
            partition,
        )
        .map_err(|e| match e {
            TxnError::InvalidProducerIdMapping | TxnError::InvalidTxnState => {
                ResponseError::InvalidTxnState
            }
            e => txn_error(e, version, 3),
        })?;
    }
    let now = broker.now_ms();
    let (result, written) = groups.run_txn((req.producer_id.0, req.producer_epoch), |co, fx| {
        co.txn_commit_offsets(now, commit, fx)
    });
    let codes = result?;
    let written = written.map_err(|e| {
        tracing::error!(error = %e, "transactional offset commit append failed");
        ResponseError::KafkaStorageError
    })?;
    let targets = crate::internal_topics::replication_targets(&written);
    crate::internal_topics::sync(written).await.map_err(|e| {
        tracing::error!(error = %e, "transactional offset commit fsync failed");
        ResponseError::KafkaStorageError
    })?;
    // In a cluster, on the ISR before acknowledged.
    crate::internal_topics::replicated(
        targets,
        std::time::Duration::from_millis(broker.config.offsets_commit_timeout_ms),
    )
    .await?;
    Ok(codes)
}
