//! Request decoding and response encoding.
//!
//! [`decode_request`] turns one frame body into a typed request or a [`DecodeError`] that says
//! what the connection must do about it. It never panics on any input: the fixed part of the
//! header is length-checked before `kafka-protocol` sees it, and the codec call itself runs
//! under `catch_unwind` as a last line of defence.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::versions::{supported_versions, SUPPORTED_APIS};

/// A decoded request.
#[derive(Debug)]
pub struct DecodedRequest {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// Why a frame could not become a request.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is too short or its bytes do not decode. Close the connection.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// An API key Gregor does not know or does not implement. Close the connection (Kafka does
    /// the same: there is no response format for an unknown API).
    #[error("unsupported api key {api_key} (correlation id {correlation_id})")]
    UnknownApi { api_key: i16, correlation_id: i32 },
    /// A known API at a version outside the advertised range. For ApiVersions the caller must
    /// answer with [`unsupported_api_versions_response`]; for any other API, close.
    #[error("unsupported version {api_version} of {api_key:?} (correlation id {correlation_id})")]
    UnsupportedVersion {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
    },
}

/// Decodes one frame body (without its length prefix).
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Malformed(format!(
            "frame of {} bytes is shorter than a request header",
            frame.len()
        )));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = match ApiKey::try_from(raw_key) {
        Ok(k) if supported_versions(k).is_some() => k,
        _ => {
            return Err(DecodeError::UnknownApi {
                api_key: raw_key,
                correlation_id,
            })
        }
    };
    let (min, max) = supported_versions(api_key).expect("checked above");
    if api_version < min || api_version > max {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            api_version,
            correlation_id,
        });
    }
    let mut buf = frame;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let header_version = api_key.request_header_version(api_version);
        let header = RequestHeader::decode(&mut buf, header_version)?;
        let body = RequestKind::decode(api_key, &mut buf, api_version)?;
        anyhow::Ok((header, body))
    }));
    match result {
        Ok(Ok((header, body))) => Ok(DecodedRequest {
            api_key,
            api_version,
            header,
            body,
        }),
        Ok(Err(e)) => Err(DecodeError::Malformed(format!(
            "{api_key:?} v{api_version}: {e}"
        ))),
        Err(_) => Err(DecodeError::Malformed(format!(
            "{api_key:?} v{api_version}: codec panicked"
        ))),
    }
}

/// Encodes a response, with its 4-byte length prefix and the header version the API requires.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api_key.response_header_version(api_version))?;
    body.encode(&mut buf, api_version)?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The ApiVersions body listing every supported API.
pub fn api_versions_body(error_code: i16) -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = error_code;
    resp.api_keys = SUPPORTED_APIS
        .iter()
        .map(|&(k, min, max)| {
            kafka_protocol::messages::api_versions_response::ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    resp
}

/// What Kafka answers to an ApiVersions request at a version it does not know:
/// UNSUPPORTED_VERSION with the supported ranges, encoded as a v0 body, so the client can
/// retry at a version both sides speak.
pub fn unsupported_api_versions_response(correlation_id: i32) -> Bytes {
    let body = ResponseKind::ApiVersions(api_versions_body(
        kafka_protocol::error::ResponseError::UnsupportedVersion.code(),
    ));
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
        .expect("an ApiVersions v0 response always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame_for<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("t")))
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_flexible_and_non_flexible_requests() {
        for v in [0, 3] {
            let f = frame_for(ApiKey::ApiVersions, v, &ApiVersionsRequest::default());
            let r = decode_request(f).unwrap();
            assert_eq!(r.header.correlation_id, 42);
            assert!(matches!(r.body, RequestKind::ApiVersions(_)));
        }
        let f = frame_for(ApiKey::Metadata, 12, &MetadataRequest::default());
        assert!(matches!(
            decode_request(f).unwrap().body,
            RequestKind::Metadata(_)
        ));
    }

    #[test]
    fn short_unknown_and_unsupported_are_errors() {
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 1])),
            Err(DecodeError::Malformed(_))
        ));
        let unknown = Bytes::from_static(&[0x27, 0x0f, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(unknown),
            Err(DecodeError::UnknownApi {
                api_key: 9999,
                correlation_id: 1
            })
        ));
        let future = Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 5, 0, 0]);
        assert!(matches!(
            decode_request(future),
            Err(DecodeError::UnsupportedVersion {
                correlation_id: 5,
                ..
            })
        ));
    }

    #[test]
    fn truncated_bodies_are_malformed_not_panics() {
        let full = frame_for(ApiKey::Metadata, 12, &MetadataRequest::default());
        for cut in 8..full.len() {
            let _ = decode_request(full.slice(0..cut));
        }
    }

    #[test]
    fn unsupported_api_versions_answer_is_v0() {
        let bytes = unsupported_api_versions_response(7);
        // length, correlation id, error code 35
        assert_eq!(&bytes[4..8], &7i32.to_be_bytes());
        assert_eq!(&bytes[8..10], &35i16.to_be_bytes());
    }
}
