//! Transcoder workers: renditions of live broadcasts, decoded, scaled and
//! encoded from the source's GoP channels and published back on the bus as
//! derived tracks (`alice/video/480p`), GoP-aligned with the source.
//!
//! - [`ladder`]: the rungs (`720p@2500k,480p@1200k,360p@700k`).
//! - [`codec`]: decode (libavcodec) → scale (libswscale) → encode (x264), with
//!   each rendition GoP opening with an IDR at the source GoP's timestamps.
//! - [`job`]: one rendition, its codec on a thread of its own, whole GoPs
//!   dropped when it cannot keep up.
//! - [`Transcoder`]: the worker. It watches what is live, works out the jobs
//!   (the ladder's rungs up to the source's height; with no ladder, one
//!   B-frame-free rendition for browsers when the source may have B-frames),
//!   takes a job only under a lease ([`gopbus_bus::lease::Leases`]: local in
//!   one process, Redis in a cluster) and only while it has capacity left,
//!   renews the lease while it works, and gives the job back when the source
//!   ends, the lease is lost, or it stays behind real time. A dead worker's
//!   leases run out and another worker takes its jobs, the rendition
//!   continuing at the source's current GoP.

pub mod codec;
pub mod job;
pub mod ladder;
mod worker;

pub use codec::EncoderSettings;
pub use job::{JobEnd, JobStats};
pub use ladder::{BadRung, Ladder, Rung};
pub use worker::{job_cost, TranscodeConfig, Transcoder, MPXS_PER_CORE};
