//! What a publisher's media carries, parsed: FLV tag headers, the avcC record
//! and its SPS, the AAC AudioSpecificConfig and the ADTS header made from it,
//! Annex B / AVCC conversion. No panic on any input.
#![no_main]

use gopbus_proto::aac::AudioSpecificConfig;
use gopbus_proto::avc::{annexb_to_avcc, avcc_to_annexb, reorders, DecoderConfigurationRecord, Sps};
use gopbus_proto::flv::{AudioTagHeader, VideoTagHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = VideoTagHeader::parse(data);
    let _ = AudioTagHeader::parse(data);
    if let Ok(asc) = AudioSpecificConfig::parse(data) {
        // The ADTS header HLS and WebRTC's decoder get for each AAC frame.
        for len in [0, 1, 200, 8184, 8185, usize::MAX] {
            let _ = asc.adts_header(len);
        }
    }
    if let Ok(record) = DecoderConfigurationRecord::parse(data) {
        for sps in &record.sps {
            let _ = Sps::parse(sps);
        }
    }
    let _ = Sps::parse(data);
    let _ = reorders(data);
    let mut out = Vec::new();
    for size in [1u8, 2, 4] {
        out.clear();
        let _ = avcc_to_annexb(data, size, &mut out);
    }
    out.clear();
    annexb_to_avcc(data, &mut out);
});
