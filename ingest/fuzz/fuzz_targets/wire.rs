//! Bus wire messages as a QUIC stream carries them (what a peer sends): the
//! framing and archive checks on arbitrary bytes, and, after a frame message,
//! its payload skipped as the stream reader does. No panic; an accepted
//! message round-trips through its encoding.
#![no_main]

use bytes::{Buf, BytesMut};
use gopbus_proto::wire::{decode, encode, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let Ok(message) = decode(&mut buf) else { return };
        let mut again = BytesMut::new();
        encode(&message, &mut again);
        assert_eq!(decode(&mut again).ok().as_ref(), Some(&message), "an accepted message does not round-trip");
        if let Message::Frame(f) = message {
            let len = f.header.len as usize;
            if buf.len() < len {
                return;
            }
            buf.advance(len);
        }
    }
});
