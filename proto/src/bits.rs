//! A big-endian bit reader with Exp-Golomb codes (H.264 §9.1), for SPS and ASC.

use crate::Error;

pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> BitReader<'a> {
    pub(crate) const fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, pos: 0, what }
    }

    pub(crate) fn bit(&mut self) -> Result<u32, Error> {
        let byte = self.data.get(self.pos / 8).ok_or(Error::invalid(self.what, "truncated"))?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    pub(crate) fn flag(&mut self) -> Result<bool, Error> {
        Ok(self.bit()? == 1)
    }

    /// Reads `n` ≤ 32 bits.
    pub(crate) fn bits(&mut self, n: u32) -> Result<u32, Error> {
        debug_assert!(n <= 32);
        let mut v: u64 = 0;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Ok(v as u32)
    }

    /// ue(v), H.264 §9.1.
    pub(crate) fn ue(&mut self) -> Result<u32, Error> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(Error::invalid(self.what, "exp-golomb code too long"));
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)) as u32)
    }

    /// se(v), H.264 §9.1.1.
    pub(crate) fn se(&mut self) -> Result<i32, Error> {
        let k = self.ue()?;
        let magnitude = i32::try_from(k.div_ceil(2))
            .map_err(|_| Error::invalid(self.what, "signed exp-golomb value out of range"))?;
        Ok(if k % 2 == 1 { magnitude } else { -magnitude })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_table_9_2() {
        // H.264 Table 9-2: bit strings and codeNum; Table 9-3: se(v) mapping.
        // 1 -> 0, 010 -> 1, 011 -> 2, 00100 -> 3, 00111 -> 6
        let data = [0b1010_0110, 0b0100_0011, 0b1000_0000];
        let mut r = BitReader::new(&data, "test");
        assert_eq!(r.ue().unwrap(), 0);
        assert_eq!(r.ue().unwrap(), 1);
        assert_eq!(r.ue().unwrap(), 2);
        assert_eq!(r.ue().unwrap(), 3);
        assert_eq!(r.ue().unwrap(), 6);
        let data = [0b0100_1100, 0b1000_0000];
        let mut r = BitReader::new(&data, "test");
        assert_eq!(r.se().unwrap(), 1); // codeNum 1 -> +1
        assert_eq!(r.se().unwrap(), -1); // codeNum 2 -> -1
        assert_eq!(r.se().unwrap(), 2); // codeNum 3 -> +2
    }

    #[test]
    fn truncated_is_error() {
        let mut r = BitReader::new(&[0, 0], "test");
        assert!(r.ue().is_err());
    }
}
