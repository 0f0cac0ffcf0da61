//! The RTMP handshake (the RTMP library's, as the server runs it) on arbitrary
//! bytes in arbitrary pieces: no panic, and a completed handshake hands back
//! exactly the bytes that followed it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let step = usize::from(split).max(1) * 16;
    let mut hs = Handshake::new(PeerType::Server);
    let mut fed = 0;
    for piece in data.chunks(step) {
        fed += piece.len();
        match hs.process_bytes(piece) {
            Ok(HandshakeProcessResult::InProgress { .. }) => {}
            Ok(HandshakeProcessResult::Completed { remaining_bytes, .. }) => {
                // C0 + C1 + C2 are 3073 bytes: whatever came after them is the session's.
                assert!(fed >= 3073 && remaining_bytes.len() == fed - 3073, "{fed} fed, {} left", remaining_bytes.len());
                return;
            }
            Err(_) => return,
        }
    }
});
