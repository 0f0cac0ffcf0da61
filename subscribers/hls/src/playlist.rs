//! Media playlists (RFC 8216), written by hand: live (a sliding window) and
//! recorded (`EVENT` while live, `VOD` with `#EXT-X-ENDLIST` once ended).

use std::fmt::Write;

/// One media segment in a playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Media sequence number.
    pub msn: u64,
    /// Its URI, relative to the playlist.
    pub uri: String,
    /// The URI of its init segment.
    pub map: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Not continuous with the segment before it (timestamps jump, encoder changed).
    pub discontinuity: bool,
}

/// A media playlist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Playlist {
    /// The segments listed, oldest first.
    pub entries: Vec<Entry>,
    /// Discontinuities in segments no longer listed (live window).
    pub discontinuity_sequence: u64,
    /// `Some("EVENT")` or `Some("VOD")` for recordings; `None` for a live window.
    pub playlist_type: Option<&'static str>,
    /// The broadcast ended: `#EXT-X-ENDLIST`.
    pub ended: bool,
}

impl Playlist {
    /// The playlist text.
    pub fn render(&self) -> String {
        let target = self.entries.iter().map(|e| e.duration.round() as u64).max().unwrap_or(1).max(1);
        let first = self.entries.first().map_or(1, |e| e.msn);
        let mut s = String::with_capacity(128 + 80 * self.entries.len());
        s.push_str("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        let _ = writeln!(s, "#EXT-X-TARGETDURATION:{target}");
        let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:{first}");
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(s, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", self.discontinuity_sequence);
        }
        if let Some(t) = self.playlist_type {
            let _ = writeln!(s, "#EXT-X-PLAYLIST-TYPE:{t}");
        }
        let mut map: Option<&str> = None;
        for e in &self.entries {
            if e.discontinuity {
                s.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if map != Some(e.map.as_str()) {
                let _ = writeln!(s, "#EXT-X-MAP:URI=\"{}\"", e.map);
                map = Some(&e.map);
            }
            let _ = writeln!(s, "#EXTINF:{:.3},\n{}", e.duration, e.uri);
        }
        if self.ended {
            s.push_str("#EXT-X-ENDLIST\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(msn: u64, map: &str, discontinuity: bool) -> Entry {
        Entry { msn, uri: format!("seg-{msn}.m4s"), map: map.into(), duration: 5.967, discontinuity }
    }

    #[test]
    fn maps_discontinuities_and_the_end() {
        let p = Playlist {
            entries: vec![entry(3, "init-1.mp4", false), entry(4, "init-1.mp4", false), entry(5, "init-2.mp4", true)],
            discontinuity_sequence: 1,
            playlist_type: Some("VOD"),
            ended: true,
        };
        assert_eq!(
            p.render(),
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:3\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:1\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"init-1.mp4\"\n\
             #EXTINF:5.967,\nseg-3.m4s\n#EXTINF:5.967,\nseg-4.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-2.mp4\"\n\
             #EXTINF:5.967,\nseg-5.m4s\n#EXT-X-ENDLIST\n"
        );
    }
}
