//! Transaction admin APIs: DescribeTransactions, ListTransactions (coordinator state) and
//! DescribeProducers (a partition's producer state: epochs, last sequences, open
//! transactions).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedTxn,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTxn;
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName, TransactionalId,
};

use super::sb;
use crate::broker::Broker;

const STATES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub fn describe_transactions(
    broker: &Arc<Broker>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let svc = broker.txns();
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| {
            let mut out = DescribedTxn::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(sb(""))
                .with_transaction_start_time_ms(-1)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let Some(svc) = svc else {
                out.error_code = ResponseError::CoordinatorNotAvailable.code();
                return out;
            };
            svc.read(|co| {
                if !co.is_loaded() {
                    out.error_code = ResponseError::CoordinatorLoadInProgress.code();
                    return;
                }
                let Some(m) = co.get(&id) else {
                    out.error_code = ResponseError::TransactionalIdNotFound.code();
                    return;
                };
                let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in &m.partitions {
                    topics.entry(t.as_str()).or_default().push(*p);
                }
                out.transaction_state = sb(m.status.name());
                out.transaction_timeout_ms = m.timeout_ms;
                out.transaction_start_time_ms = m.start_ms;
                out.producer_id = ProducerId(m.producer_id);
                out.producer_epoch = m.producer_epoch;
                out.topics = topics
                    .into_iter()
                    .map(|(t, ps)| {
                        TopicData::default()
                            .with_topic(TopicName(sb(t)))
                            .with_partitions(ps)
                    })
                    .collect();
            });
            out
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub fn list_transactions(
    broker: &Arc<Broker>,
    req: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    let mut resp = ListTransactionsResponse::default();
    let Some(svc) = broker.txns() else {
        resp.error_code = ResponseError::CoordinatorNotAvailable.code();
        return resp;
    };
    let states: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    resp.unknown_state_filters = states
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .map(|s| sb(s.clone()))
        .collect();
    let pids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let min_age = if version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let pattern = if version >= 2 {
        req.transactional_id_pattern.as_ref().map(|s| s.to_string())
    } else {
        None
    };
    let now = broker.now_ms();
    svc.read(|co| {
        if !co.is_loaded() {
            resp.error_code = ResponseError::CoordinatorLoadInProgress.code();
            return;
        }
        let mut listed: Vec<_> = co
            .all()
            .filter(|m| states.is_empty() || states.iter().any(|s| s == m.status.name()))
            .filter(|m| pids.is_empty() || pids.contains(&m.producer_id))
            .filter(|m| min_age < 0 || (m.start_ms >= 0 && now - m.start_ms >= min_age))
            // A pattern is a Java regex in Kafka; a plain substring match here.
            .filter(|m| {
                pattern
                    .as_deref()
                    .is_none_or(|p| p.is_empty() || m.transactional_id.contains(p))
            })
            .map(|m| {
                ListedTxn::default()
                    .with_transactional_id(TransactionalId(sb(m.transactional_id.clone())))
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_transaction_state(sb(m.status.name()))
            })
            .collect();
        listed.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        resp.transaction_states = listed;
    });
    resp
}

pub fn describe_producers(
    broker: &Arc<Broker>,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topic(&t.name);
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&p| {
                    let mut r = PartitionResponse::default().with_partition_index(p);
                    let partition = match super::served_partition(broker, topic.as_ref(), p) {
                        Ok(partition) => partition,
                        Err(e) => {
                            r.error_code = e.code();
                            return r;
                        }
                    };
                    let (mut producers, ongoing) = partition.producer_summaries();
                    let ongoing: BTreeMap<i64, i64> = ongoing.into_iter().collect();
                    producers.sort_unstable();
                    r.active_producers = producers
                        .into_iter()
                        .map(|p| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(p.producer_id))
                                .with_producer_epoch(i32::from(p.epoch))
                                .with_last_sequence(p.last_sequence)
                                .with_last_timestamp(p.last_timestamp)
                                .with_coordinator_epoch(p.coordinator_epoch)
                                .with_current_txn_start_offset(
                                    ongoing.get(&p.producer_id).copied().unwrap_or(-1),
                                )
                        })
                        .collect();
                    r
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
