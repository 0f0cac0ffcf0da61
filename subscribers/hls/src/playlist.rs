//! Media playlists (RFC 8216 and its second edition's Low-Latency HLS), written
//! by hand (no crate writes the LL-HLS tags): live (a sliding window with
//! partial segments and a preload hint) and recorded (`EVENT` while live, `VOD`
//! with `#EXT-X-ENDLIST` once ended).

use std::fmt::Write;

/// One partial segment (LL-HLS `#EXT-X-PART`).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Its URI, relative to the playlist.
    pub uri: String,
    /// Duration in seconds.
    pub duration: f64,
    /// It starts with an IDR frame (`INDEPENDENT=YES`).
    pub independent: bool,
}

/// One media segment in a playlist: complete (`#EXTINF` and its URI) or, the
/// last one of a live playlist, in progress (only its parts so far).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Media sequence number.
    pub msn: u64,
    /// Its URI, relative to the playlist.
    pub uri: String,
    /// The URI of its init segment.
    pub map: String,
    /// Duration in seconds (of the parts so far while in progress).
    pub duration: f64,
    /// Not continuous with the segment before it (timestamps jump, encoder changed).
    pub discontinuity: bool,
    /// Wall-clock time of its first sample (`#EXT-X-PROGRAM-DATE-TIME`, RFC 3339).
    pub program_date_time: Option<String>,
    /// Its partial segments (listed only near the live edge).
    pub parts: Vec<Part>,
    /// Cut: it has its `#EXTINF` and URI. False for the segment in progress.
    pub complete: bool,
}

/// The Low-Latency HLS settings of a live playlist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowLatency {
    /// `PART-TARGET`, seconds.
    pub part_target: f64,
    /// `PART-HOLD-BACK`, seconds (at least 3 × the part target).
    pub part_hold_back: f64,
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
    /// LL-HLS: parts, blocking reload, the preload hint.
    pub low_latency: Option<LowLatency>,
    /// The URI of the part expected next (`#EXT-X-PRELOAD-HINT`).
    pub preload_hint: Option<String>,
}

impl Playlist {
    /// `#EXT-X-TARGETDURATION`: the longest segment, rounded.
    pub fn target_duration(&self) -> u64 {
        self.entries.iter().filter(|e| e.complete).map(|e| e.duration.round() as u64).max().unwrap_or(1).max(1)
    }

    /// The playlist text.
    pub fn render(&self) -> String {
        let target = self.target_duration();
        let first = self.entries.first().map_or(1, |e| e.msn);
        let mut s = String::with_capacity(256 + 160 * self.entries.len());
        s.push_str("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        let _ = writeln!(s, "#EXT-X-TARGETDURATION:{target}");
        if let Some(ll) = self.low_latency {
            let _ = writeln!(
                s,
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}\n#EXT-X-PART-INF:PART-TARGET={:.3}",
                ll.part_hold_back, ll.part_target
            );
        }
        let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:{first}");
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(s, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", self.discontinuity_sequence);
        }
        if let Some(t) = self.playlist_type {
            let _ = writeln!(s, "#EXT-X-PLAYLIST-TYPE:{t}");
        }
        // Parts are listed for the segments within three target durations of the
        // end (RFC 8216bis §4.4.4.9); older segments are listed whole.
        let mut parts_from = self.entries.len();
        let mut recent = 0.0;
        for (i, e) in self.entries.iter().enumerate().rev() {
            if recent >= 3.0 * target as f64 && e.complete {
                break;
            }
            recent += e.duration;
            parts_from = i;
        }
        let mut map: Option<&str> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if e.discontinuity {
                s.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if map != Some(e.map.as_str()) {
                let _ = writeln!(s, "#EXT-X-MAP:URI=\"{}\"", e.map);
                map = Some(&e.map);
            }
            if let Some(t) = &e.program_date_time {
                let _ = writeln!(s, "#EXT-X-PROGRAM-DATE-TIME:{t}");
            }
            if self.low_latency.is_some() && i >= parts_from {
                for p in &e.parts {
                    let _ = write!(s, "#EXT-X-PART:DURATION={:.3},URI=\"{}\"", p.duration, p.uri);
                    s.push_str(if p.independent { ",INDEPENDENT=YES\n" } else { "\n" });
                }
            }
            if e.complete {
                let _ = writeln!(s, "#EXTINF:{:.3},\n{}", e.duration, e.uri);
            }
        }
        if let (Some(_), Some(hint), false) = (self.low_latency, &self.preload_hint, self.ended) {
            let _ = writeln!(s, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{hint}\"");
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
        Entry {
            msn,
            uri: format!("seg-{msn}.m4s"),
            map: map.into(),
            duration: 5.967,
            discontinuity,
            program_date_time: None,
            parts: Vec::new(),
            complete: true,
        }
    }

    #[test]
    fn maps_discontinuities_and_the_end() {
        let p = Playlist {
            entries: vec![entry(3, "init-1.mp4", false), entry(4, "init-1.mp4", false), entry(5, "init-2.mp4", true)],
            discontinuity_sequence: 1,
            playlist_type: Some("VOD"),
            ended: true,
            ..Playlist::default()
        };
        assert_eq!(
            p.render(),
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:3\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:1\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"init-1.mp4\"\n\
             #EXTINF:5.967,\nseg-3.m4s\n#EXTINF:5.967,\nseg-4.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-2.mp4\"\n\
             #EXTINF:5.967,\nseg-5.m4s\n#EXT-X-ENDLIST\n"
        );
    }

    #[test]
    fn parts_near_the_live_edge_and_the_preload_hint() {
        let part = |msn: u64, i: usize| Part { uri: format!("part-{msn}.{i}.m4s"), duration: 0.5, independent: i == 0 };
        let mut entries: Vec<Entry> = (1..=5)
            .map(|msn| Entry {
                duration: 2.0,
                parts: (0..4).map(|i| part(msn, i)).collect(),
                ..entry(msn, "init-1.mp4", false)
            })
            .collect();
        entries.push(Entry {
            duration: 1.0,
            complete: false,
            parts: vec![part(6, 0), part(6, 1)],
            ..entry(6, "init-1.mp4", false)
        });
        let p = Playlist {
            entries,
            low_latency: Some(LowLatency { part_target: 0.5, part_hold_back: 1.5 }),
            preload_hint: Some("part-6.2.m4s".into()),
            ..Playlist::default()
        };
        let text = p.render();
        assert!(
            text.contains(
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500\n#EXT-X-PART-INF:PART-TARGET=0.500\n"
            ),
            "{text}"
        );
        // Parts of the segments reaching into the last three target durations (6 s): 3 to 6.
        assert!(!text.contains("part-2."), "{text}");
        assert!(text.contains("part-3.0.m4s"), "{text}");
        assert!(text.contains("#EXT-X-PART:DURATION=0.500,URI=\"part-4.0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=0.500,URI=\"part-4.1.m4s\"\n"), "{text}");
        assert!(text.ends_with("#EXTINF:2.000,\nseg-5.m4s\n#EXT-X-PART:DURATION=0.500,URI=\"part-6.0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=0.500,URI=\"part-6.1.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-6.2.m4s\"\n"), "{text}");
        assert!(!text.contains("seg-6"), "the segment in progress has no URI yet: {text}");
    }
}
