//! Whether a stream reorders pictures (B-frames): from its SPS, or from its
//! timestamps.

/// Whether a stream's pictures come out of the decoder in another order than
/// they go in (B-frames), as far as its SPS says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reorder {
    /// No reordering: Baseline profile, a VUI saying
    /// `max_num_reorder_frames = 0`, or enough frames seen in order.
    No,
    /// Pictures are reordered: the VUI says so, or a frame was presented
    /// before one decoded earlier.
    Yes,
    /// Not known: no bitstream restriction in the SPS's VUI, or too few frames seen.
    Unknown,
}

/// What the SPS in an avcC says about B-frames (read with `h264-reader`, which
/// parses the VUI). x264, OBS's default encoder, always writes the bitstream
/// restriction.
pub fn reorders(avcc: &[u8]) -> Reorder {
    use h264_reader::avcc::AvcDecoderConfigurationRecord;
    // Our own parser first: the record's structure, bounds-checked.
    if crate::avc::DecoderConfigurationRecord::parse(avcc).is_err() {
        return Reorder::Unknown;
    }
    // h264-reader 0.9 panics on some malformed parameter-set lists (an
    // out-of-range slice; found by fuzzing): a panic here is "unknown".
    std::panic::catch_unwind(|| {
        let Ok(record) = AvcDecoderConfigurationRecord::try_from(avcc) else { return Reorder::Unknown };
        let Ok(ctx) = record.create_context() else { return Reorder::Unknown };
        let Some(sps) = ctx.sps().next() else { return Reorder::Unknown };
        if u8::from(sps.profile_idc) == 66 {
            return Reorder::No;
        }
        match sps.vui_parameters.as_ref().and_then(|v| v.bitstream_restrictions.as_ref()) {
            Some(r) if r.max_num_reorder_frames == 0 => Reorder::No,
            Some(_) => Reorder::Yes,
            None => Reorder::Unknown,
        }
    })
    .unwrap_or(Reorder::Unknown)
}

/// Whether a video stream reorders frames (B-frames), from its timestamps:
/// a frame presented before one decoded earlier means reordering.
#[derive(Debug, Clone, Default)]
pub struct ReorderDetector {
    max_pts: Option<i64>,
    frames: u32,
    reordered: bool,
}

impl ReorderDetector {
    /// Frames without reordering after which a stream counts as B-frame free
    /// (x264 and OBS put B-frames within the first few frames of a GoP).
    pub const DECIDE_AFTER: u32 = 30;

    /// Looks at the next video frame (in decode order) and says what is known
    /// (`Unknown` until reordering is seen or [`DECIDE_AFTER`](Self::DECIDE_AFTER) frames passed without).
    pub fn push(&mut self, pts: i64, keyframe: bool) -> Reorder {
        if keyframe {
            // A (closed) GoP starts a new presentation order.
            self.max_pts = None;
        }
        if let Some(max) = self.max_pts {
            if pts < max {
                self.reordered = true;
            }
        }
        self.max_pts = Some(self.max_pts.map_or(pts, |m| m.max(pts)));
        self.frames = self.frames.saturating_add(1);
        self.state()
    }

    /// What is known so far.
    pub const fn state(&self) -> Reorder {
        if self.reordered {
            Reorder::Yes
        } else if self.frames >= Self::DECIDE_AFTER {
            Reorder::No
        } else {
            Reorder::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_record_is_unknown_not_a_panic() {
        // Found by the `records` fuzz target: h264-reader sliced out of range on it.
        assert_eq!(reorders(&[0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00]), Reorder::Unknown);
        assert_eq!(reorders(&[]), Reorder::Unknown);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn x264_says_whether_it_reorders() {
        // avcCs written by ffmpeg's libx264: High with 3 B-frames, High without, Baseline.
        let high_bf3 = "0164000dffe100196764000dacd94141fb0110000003001000000303c0f142996001000668ebe3cb22c0fdf8f800";
        let high_bf0 = "0164000dffe100176764000dacb20283f60220000003002000000781e2854901000668ebc3cb22c0fdf8f800";
        let baseline = "0142c00dffe100186742c00dd90141fb0110000003001000000303c0f142a48001000568cb83cb20";
        assert_eq!(reorders(&hex(high_bf3)), Reorder::Yes);
        assert_eq!(reorders(&hex(high_bf0)), Reorder::No);
        assert_eq!(reorders(&hex(baseline)), Reorder::No);
        assert_eq!(reorders(&[1, 2, 3]), Reorder::Unknown);
    }

    #[test]
    fn b_frames_are_detected_from_presentation_order() {
        // I P B B P B B (decode order), pts in frames of 33 ms.
        let mut d = ReorderDetector::default();
        let pts = [0, 99, 33, 66, 198, 132, 165];
        let states: Vec<Reorder> = pts.iter().enumerate().map(|(i, &p)| d.push(p, i == 0)).collect();
        assert_eq!(states[1], Reorder::Unknown);
        assert_eq!(states[2], Reorder::Yes);
        let mut d = ReorderDetector::default();
        let mut last = Reorder::Unknown;
        for i in 0..ReorderDetector::DECIDE_AFTER {
            // A new GoP every 10 frames, with a constant composition offset.
            last = d.push(i64::from(i) * 33 + 66, i % 10 == 0);
        }
        assert_eq!(last, Reorder::No);
    }
}
