//! FLV's 32-bit millisecond timestamps unwrapped into `i64`, and rebased after a
//! publisher takeover so players see timestamps keep rising.

/// Unwraps one publisher's timestamps.
#[derive(Debug, Clone)]
pub struct Timeline {
    last_raw: Option<u32>,
    current: i64,
    /// Added to every output; set at the first timestamp when rebasing.
    offset: i64,
    rebase_after: Option<i64>,
}

impl Timeline {
    /// A timeline whose first output is greater than `rebase_after`, if given.
    pub const fn new(rebase_after: Option<i64>) -> Self {
        Self { last_raw: None, current: 0, offset: 0, rebase_after }
    }

    /// Maps a raw 32-bit timestamp to the unwrapped (and rebased) `i64` one.
    ///
    /// Consecutive timestamps are read as the nearest value: a step of more than
    /// 2^31 ms backwards is a wrap forwards. Small steps back (audio and video
    /// interleaved slightly out of order) stay small steps back.
    pub fn map(&mut self, raw: u32) -> i64 {
        match self.last_raw {
            None => {
                self.current = i64::from(raw);
                if let Some(after) = self.rebase_after {
                    if self.current <= after {
                        self.offset = after + 1 - self.current;
                    }
                }
            }
            Some(last) => self.current += i64::from(raw.wrapping_sub(last) as i32),
        }
        self.last_raw = Some(raw);
        self.current + self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_across_the_32_bit_boundary() {
        let mut t = Timeline::new(None);
        assert_eq!(t.map(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(t.map(u32::MAX), i64::from(u32::MAX));
        assert_eq!(t.map(5), (1i64 << 32) + 5);
        assert_eq!(t.map(2), (1i64 << 32) + 2, "small step back stays back");
        assert_eq!(t.map(40), (1i64 << 32) + 40);
    }

    #[test]
    fn rebases_after_a_takeover() {
        let mut t = Timeline::new(Some(90_000));
        assert_eq!(t.map(0), 90_001);
        assert_eq!(t.map(33), 90_034);
        // A new publisher already past the old one is left alone.
        let mut t = Timeline::new(Some(1_000));
        assert_eq!(t.map(5_000), 5_000);
    }
}
