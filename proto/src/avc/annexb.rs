//! AVCC (length-prefixed, ISO/IEC 14496-15) ↔ Annex B (start codes, H.264 Annex B).
//!
//! Conversions write into a caller's buffer and never allocate per NAL unit; the
//! iterators borrow the input.

use crate::Error;

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Iterates the NAL units of an AVCC buffer.
pub struct AvccNalus<'a> {
    data: &'a [u8],
    length_size: usize,
}

/// The NAL units of `data`, each prefixed by a `length_size`-byte big-endian length.
pub fn avcc_nalus(data: &[u8], length_size: u8) -> AvccNalus<'_> {
    AvccNalus { data, length_size: usize::from(length_size) }
}

impl<'a> Iterator for AvccNalus<'a> {
    type Item = Result<&'a [u8], Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        if !matches!(self.length_size, 1 | 2 | 4) {
            self.data = &[];
            return Some(Err(Error::invalid("AVCC", "NAL length size must be 1, 2 or 4")));
        }
        if self.data.len() < self.length_size {
            self.data = &[];
            return Some(Err(Error::invalid("AVCC", "truncated NAL length")));
        }
        let len = self.data[..self.length_size].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let rest = &self.data[self.length_size..];
        if len > rest.len() {
            self.data = &[];
            return Some(Err(Error::invalid("AVCC", "NAL length past the end")));
        }
        let (nal, tail) = rest.split_at(len);
        self.data = tail;
        Some(Ok(nal))
    }
}

/// Appends `avcc` to `out` as Annex B with 4-byte start codes.
pub fn avcc_to_annexb(avcc: &[u8], length_size: u8, out: &mut Vec<u8>) -> Result<(), Error> {
    for nal in avcc_nalus(avcc, length_size) {
        let nal = nal?;
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
    }
    Ok(())
}

/// The NAL units of an Annex B byte stream (3- or 4-byte start codes; trailing
/// zero bytes belong to the next start code).
pub fn annexb_nalus(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = match find_start_code(data) {
        Some((_, after)) => &data[after..],
        None => &data[data.len()..],
    };
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (nal, next) = match find_start_code(rest) {
            Some((at, after)) => (&rest[..at], &rest[after..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        // Strip trailing_zero_8bits.
        let end = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Some(&nal[..end])
    })
    .filter(|nal| !nal.is_empty())
}

/// Appends the NAL units of an Annex B stream to `out` with 4-byte lengths.
pub fn annexb_to_avcc(annexb: &[u8], out: &mut Vec<u8>) {
    for nal in annexb_nalus(annexb) {
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
}

/// Position of the next `00 00 01` and the index just past it.
fn find_start_code(data: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i + 2] > 1 {
            i += 3;
        } else if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            return Some((i, i + 3));
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let avcc = [0, 0, 0, 2, 0x67, 0x42, 0, 0, 0, 3, 0x65, 0, 1];
        let mut annexb = Vec::new();
        avcc_to_annexb(&avcc, 4, &mut annexb).unwrap();
        assert_eq!(annexb, [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 0, 1]);
        let mut back = Vec::new();
        annexb_to_avcc(&annexb, &mut back);
        assert_eq!(back, avcc);
    }

    #[test]
    fn three_byte_start_codes_and_trailing_zeros() {
        let stream = [0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 1, 0, 0, 0, 0, 1, 0x68, 2];
        let nals: Vec<&[u8]> = annexb_nalus(&stream).collect();
        assert_eq!(nals, vec![&[0x09, 0xf0][..], &[0x67, 1][..], &[0x68, 2][..]]);
    }

    #[test]
    fn bad_avcc_is_an_error() {
        assert!(avcc_nalus(&[0, 0, 0, 9, 1], 4).any(|r| r.is_err()));
        assert!(avcc_nalus(&[0, 0], 4).any(|r| r.is_err()));
        assert!(avcc_nalus(&[1, 1], 3).any(|r| r.is_err()));
        let two: Vec<_> = avcc_nalus(&[0, 1, 0x65, 0, 1, 0x41], 2).collect::<Result<_, _>>().unwrap();
        assert_eq!(two, vec![&[0x65][..], &[0x41][..]]);
    }
}
