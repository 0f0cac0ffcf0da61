//! The AMF pre-check and the RTMP library's parser behind it: whatever the
//! check accepts, the library parses without a panic (and without deep
//! recursion: the check bounds nesting at 16).
#![no_main]

use bytes::Bytes;
use gopbus_ingest::amf::{check, AmfLimits};
use libfuzzer_sys::fuzz_target;
use rml_rtmp::messages::MessagePayload;
use rml_rtmp::time::RtmpTimestamp;

fuzz_target!(|data: &[u8]| {
    for (type_id, command) in [(20u8, true), (18u8, false)] {
        if check(data, AmfLimits::default(), command).is_ok() {
            let payload = MessagePayload {
                timestamp: RtmpTimestamp::new(0),
                type_id,
                message_stream_id: 0,
                data: Bytes::copy_from_slice(data),
            };
            let _ = payload.to_rtmp_message();
        }
    }
});
