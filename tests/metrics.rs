//! `/metrics` parses with the Prometheus project's own parser and its values
//! move with real traffic (an ffmpeg publisher, an RTMP player, an HLS
//! client, a QUIC subscriber); `/readyz` and `/healthz` answer.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Scrapes `/metrics` and parses it: sample (`name{labels}`) → value.
fn scrape(server: &Server) -> HashMap<String, f64> {
    let (status, head, body) = http(server.http, "GET", "/metrics", "", b"");
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    // Debian's Python, where python3-prometheus-client is installed.
    let python = "/usr/bin/python3";
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is required: run `bash .ci/test`, which installs python3-prometheus-client"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/parse_metrics.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics (python3-prometheus-client is needed: `bash .ci/test` installs it): {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(m: &HashMap<String, f64>, sample: &str) -> f64 {
    *m.get(sample).unwrap_or_else(|| panic!("{sample} missing: {m:?}"))
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let server = Server::start("metrics");
    assert_eq!(http(server.http, "GET", "/readyz", "", b"").0, 200);
    assert_eq!(http(server.http, "GET", "/healthz", "", b"").0, 200);
    let before = scrape(&server);
    assert_eq!(value(&before, "gopbus_broadcasts"), 0.0);
    assert_eq!(value(&before, "gopbus_ingest_bytes_total"), 0.0);

    let key = server.create_stream("cam");
    let _publisher = ffmpeg_publish(&Fixture::av(48000, 60), &server.url(&key));
    let dir = tmpdir("metrics-play");
    let _player = ffmpeg_play(&server.url("cam"), &dir.join("p.flv"));
    let (bus, token, ca) = server.bus();
    let _dump = dump(&bus, &token, &ca, "cam", &dir.join("dump.bin"), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let _ = http(server.http, "GET", "/hls/cam/index.m3u8", "", b"");
        let m = scrape(&server);
        let ready = value(&m, "gopbus_viewers{protocol=rtmp}") == 1.0
            && value(&m, "gopbus_viewers{protocol=quic}") == 1.0
            && value(&m, "gopbus_quic_grouped_subscribers") == 1.0
            && value(&m, "gopbus_viewers{protocol=hls}") >= 1.0
            && value(&m, "gopbus_transcode_frames_total") > 0.0;
        if ready {
            break m;
        }
        assert!(Instant::now() < deadline, "metrics did not follow the traffic: {m:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value(&m, "gopbus_broadcasts"), 1.0);
    assert!(value(&m, "gopbus_tracks_derived") >= 1.0, "the browser rendition and Opus: {m:?}");
    assert!(value(&m, "gopbus_ingest_bytes_total") > 50_000.0);
    assert!(value(&m, "gopbus_ingest_frames_total") > 50.0);
    assert!(value(&m, "gopbus_rtmp_connections") >= 2.0, "publisher and player");
    assert!(value(&m, "gopbus_rtmp_received_bytes_total") > 50_000.0);
    assert_eq!(value(&m, "gopbus_quic_connections"), 1.0, "the dump");
    assert_eq!(value(&m, "gopbus_quic_subscriber_groups"), 1.0, "the dump, caught up, is served by a group");
    for p in ["rtmp", "quic"] {
        assert!(value(&m, &format!("gopbus_egress_bytes_total{{protocol={p}}}")) > 0.0, "{p}");
        assert!(value(&m, &format!("gopbus_egress_frames_total{{protocol={p}}}")) > 0.0, "{p}");
    }
    assert!(value(&m, "gopbus_egress_bytes_total{protocol=hls}") > 0.0);
    assert_eq!(value(&m, "gopbus_transcode_jobs"), 1.0);

    // Counters only grow.
    std::thread::sleep(Duration::from_secs(2));
    let later = scrape(&server);
    for sample in
        ["gopbus_ingest_bytes_total", "gopbus_egress_bytes_total{protocol=rtmp}", "gopbus_transcode_frames_total"]
    {
        assert!(value(&later, sample) > value(&m, sample), "{sample} did not grow");
    }
}
