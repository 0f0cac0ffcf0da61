//! gopbus benchmarks, and the light RTMP clients they and the end-to-end tests use.
//!
//! Run with `cargo run -p bench --release -- SCENARIO [options]` (`-- all` for the
//! standard set, `-- help` for the options). Every scenario repeats its
//! measurement, prints a markdown table (figures, machine, commit, parameters) and
//! writes the same as JSON.
//!
//! - [`flv`]: reads an FLV file into tags.
//! - [`media`]: the test stream, made once with ffmpeg.
//! - [`rtmp`]: light RTMP publisher and player on rml_rtmp's client session.
//! - [`target`]: the server under test: a `gopbus serve` on loopback, or any RTMP URL.
//! - [`moq`]: a small moq-lite client, to load moq-relay as the bench loads gopbus.
//! - [`loadgen`]: QUIC subscribers in a process of their own (gopbus or moq-lite).
//! - [`cpus`]: pinning the server and the bench to CPUs.
//! - [`procstat`]: CPU and memory of a process from `/proc`.
//! - [`alloc`]: the counting allocator of the bench binary.
//! - [`report`]: tables and JSON.
//! - [`scenarios`]: the scenarios.
//! - [`web`]: hls.js in Chromium: the npm packages and a player page.
//! - [`whep`]: a light WHEP (WebRTC) viewer on webrtc-rs.
#![warn(missing_docs)]

pub mod alloc;
pub mod cpus;
pub mod flv;
pub mod loadgen;
pub mod media;
pub mod moq;
pub mod procstat;
pub mod report;
pub mod rtmp;
pub mod scenarios;
pub mod target;
pub mod web;
pub mod whep;
