//! The RTMP chunk decoder on arbitrary bytes read in arbitrary pieces, with
//! Set Chunk Size and Abort applied as the session applies them: no panic,
//! and what incomplete messages hold stays under its limit.
#![no_main]

use bytes::BytesMut;
use gopbus_ingest::chunk::ChunkDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let step = usize::from(split).max(1);
    let mut dec = ChunkDecoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => {
                    let body = m.contiguous();
                    assert_eq!(body.len(), m.len);
                    if m.type_id == 1 && body.len() >= 4 {
                        let size = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                        if dec.set_chunk_size(size).is_err() {
                            return;
                        }
                    } else if m.type_id == 2 && body.len() >= 4 {
                        dec.abort(u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
