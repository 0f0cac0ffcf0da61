//! Bus wire messages (what a QUIC peer sends): framing and archive checks
//! on arbitrary bytes. No panic; an accepted message re-encodes.
#![no_main]

use bytes::BytesMut;
use gopbus_proto::wire::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(_message) = decode(&mut buf) {}
});
