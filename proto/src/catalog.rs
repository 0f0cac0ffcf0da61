//! What is live: a broadcast's catalog (its tracks) and the announcements that
//! say when broadcasts start, change and end. The same types travel in process
//! and on the QUIC control stream.

use crate::media::{EndReason, TrackInfo, TrackKind};

/// A live broadcast and its tracks: the published ones (`video`, `audio`) and
/// the derived ones that workers added (`audio/opus`, `video/480p`).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Catalog {
    /// The broadcast's public name.
    pub name: String,
    /// Its tracks, published first, then derived ones by name.
    pub tracks: Vec<TrackInfo>,
}

impl Catalog {
    /// The track called `name`.
    pub fn track(&self, name: &str) -> Option<&TrackInfo> {
        self.tracks.iter().find(|t| t.name == name)
    }

    /// The tracks of one kind.
    pub fn of_kind(&self, kind: TrackKind) -> impl Iterator<Item = &TrackInfo> {
        self.tracks.iter().filter(move |t| t.kind() == kind)
    }
}

/// A change in what is live.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Announcement {
    /// A broadcast started (its first GoP opened), with its tracks.
    Started(Catalog),
    /// A live broadcast's tracks changed: a derived track was added or ended, or
    /// a track's configuration changed (a new resolution).
    Changed(Catalog),
    /// A broadcast ended.
    Ended(Ended),
    /// Everything live now. The first announcement a watcher gets, and the one it
    /// gets in place of the announcements it missed when it fell behind: rebuild
    /// from it.
    Live(Vec<Catalog>),
}

/// The end of a broadcast.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Ended {
    /// The broadcast's name.
    pub name: String,
    /// Why it ended.
    pub reason: EndReason,
}

/// Splits a bus name into the broadcast and the derived track it carries:
/// `alice/audio/opus` → (`alice`, `Some("audio/opus")`), `alice` → (`alice`, `None`).
pub fn split_track_name(bus_name: &str) -> (&str, Option<&str>) {
    match bus_name.split_once('/') {
        Some((b, t)) => (b, Some(t)),
        None => (bus_name, None),
    }
}

/// The bus name under which the derived track `track` of `broadcast` is published.
pub fn derived_name(broadcast: &str, track: &str) -> String {
    format!("{broadcast}/{track}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(split_track_name("alice/audio/opus"), ("alice", Some("audio/opus")));
        assert_eq!(split_track_name("alice"), ("alice", None));
        assert_eq!(derived_name("alice", "video/480p"), "alice/video/480p");
    }
}
