//! InitProducerId for idempotent producers: hands out producer IDs and bumps epochs.
//!
//! Transactional producers (a `transactional_id`) are routed to the transaction
//! coordinator (`handlers::txn`) instead.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::broker::Broker;

pub fn init_producer_id(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        resp.error_code = ResponseError::InvalidRequest.code();
        return resp;
    }
    // KIP-360: an idempotent producer that hit a sequence error asks for its epoch to be
    // bumped by sending its current ID and epoch; it keeps its ID unless the epoch would
    // overflow, in which case it gets a fresh one.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch + 1;
        return resp;
    }
    match broker.allocate_producer_id() {
        Ok(id) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        Err(e) => resp.error_code = e.code.code(),
    }
    resp
}
