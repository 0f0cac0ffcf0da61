//! RTMP ingest.
