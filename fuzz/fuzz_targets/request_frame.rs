//! Raw bytes from a socket: framing, then header and body decoding.
#![no_main]

use bytes::BytesMut;
use gregor_protocol::{decode_request, FrameDecoder};
use libfuzzer_sys::fuzz_target;

// The broker runs with this allocator; without it a hostile array count aborts the process
// (see gregor_protocol::alloc_guard), which is the defect the guard exists for.
#[global_allocator]
static ALLOC: gregor_protocol::alloc_guard::GuardedAllocator =
    gregor_protocol::alloc_guard::GuardedAllocator;

fuzz_target!(|data: &[u8]| {
    let decoder = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let _ = decode_request(frame);
    }
});
