//! The ABR ladder: rungs written `720p@2500k`, optionally `@30fps`, separated
//! by commas.

use std::fmt;
use std::str::FromStr;

/// One rendition of a ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rung {
    /// Output height in pixels (the width follows the source's aspect).
    pub height: u32,
    /// Target bitrate, kbit/s (also the VBV cap over one second).
    pub bitrate_kbps: u32,
    /// Frame-rate cap; `None` keeps the source's.
    pub fps: Option<u32>,
}

impl Rung {
    /// The derived track it is published as: `video/480p`.
    pub fn track(&self) -> String {
        format!("video/{}p", self.height)
    }

    /// Its name in RTMP play names and playlists: `480p`.
    pub fn label(&self) -> String {
        format!("{}p", self.height)
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}p@{}k", self.height, self.bitrate_kbps)?;
        if let Some(fps) = self.fps {
            write!(f, "@{fps}fps")?;
        }
        Ok(())
    }
}

/// A rung or ladder that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rendition {0:?}: write HEIGHTp@BITRATEk, optionally @FPSfps (for example 480p@1200k or 360p@700k@30fps)")]
pub struct BadRung(pub String);

impl FromStr for Rung {
    type Err = BadRung;

    fn from_str(s: &str) -> Result<Self, BadRung> {
        let bad = || BadRung(s.to_owned());
        let mut parts = s.trim().split('@');
        let height = parts.next().and_then(|h| h.strip_suffix('p')).and_then(|h| h.parse().ok()).ok_or_else(bad)?;
        let bitrate_kbps = parts
            .next()
            .and_then(|b| b.strip_suffix('k').or_else(|| b.strip_suffix("kbps")))
            .and_then(|b| b.parse().ok())
            .ok_or_else(bad)?;
        let fps = match parts.next() {
            None => None,
            Some(f) => Some(f.strip_suffix("fps").and_then(|f| f.parse().ok()).ok_or_else(bad)?),
        };
        if parts.next().is_some()
            || !(64..=4320).contains(&height)
            || !(50..=100_000).contains(&bitrate_kbps)
            || fps.is_some_and(|f| !(1..=240).contains(&f))
        {
            return Err(bad());
        }
        Ok(Self { height, bitrate_kbps, fps })
    }
}

/// Rungs, highest first, one per height.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ladder(pub Vec<Rung>);

impl FromStr for Ladder {
    type Err = BadRung;

    fn from_str(s: &str) -> Result<Self, BadRung> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(Self::default());
        }
        let mut rungs = s.split(',').map(str::parse).collect::<Result<Vec<Rung>, _>>()?;
        rungs.sort_by_key(|r| std::cmp::Reverse(r.height));
        rungs.dedup_by_key(|r| r.height);
        Ok(Self(rungs))
    }
}

impl fmt::Display for Ladder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rungs_and_ladders() {
        let l: Ladder = "360p@700k, 720p@2500k,480p@1200k@30fps".parse().unwrap();
        assert_eq!(l.0.iter().map(|r| r.height).collect::<Vec<_>>(), vec![720, 480, 360]);
        assert_eq!(l.0[1].fps, Some(30));
        assert_eq!(l.to_string(), "720p@2500k,480p@1200k@30fps,360p@700k");
        assert_eq!(l.0[1].track(), "video/480p");
        assert_eq!("none".parse::<Ladder>().unwrap(), Ladder::default());
        for bad in ["720@2500k", "720p", "720p@fast", "720p@2500k@x", "10p@100k", "720p@2500k@30fps@1"] {
            assert!(bad.parse::<Rung>().is_err(), "{bad}");
        }
    }
}
