//! Every request body the broker accepts, at every advertised version: a valid header for a
//! chosen (api, version) followed by arbitrary body bytes.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{BufMut, Bytes, BytesMut};
use gregor_protocol::{decode_request, SUPPORTED_APIS};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: gregor_protocol::alloc_guard::GuardedAllocator =
    gregor_protocol::alloc_guard::GuardedAllocator;

#[derive(Arbitrary, Debug)]
struct Input {
    api: u8,
    version: u8,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let (api, min, max) = SUPPORTED_APIS[input.api as usize % SUPPORTED_APIS.len()];
    let version = min + (input.version as i16 % (max - min + 1));
    let mut frame = BytesMut::new();
    frame.put_i16(api as i16);
    frame.put_i16(version);
    frame.put_i32(1);
    frame.put_i16(-1); // null client id
    if api.request_header_version(version) >= 2 {
        frame.put_u8(0); // no tagged fields
    }
    frame.put_slice(&input.body);
    let _ = decode_request(Bytes::from(frame));
});
