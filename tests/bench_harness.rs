//! Every benchmark scenario runs once at a tiny size, so the harness cannot rot.
//! Nothing here asserts a timing: only that each scenario measures what it says.

mod common;

use std::path::PathBuf;

use bench::report::Report;
use bench::scenarios::{self, Params, ALL};
use common::*;

fn num(report: &Report, row: usize, col: &str) -> f64 {
    report.rows[row]
        .get(col)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{}: no numeric {col:?}", report.scenario))
}

fn text(report: &Report, row: usize, col: &str) -> String {
    report.rows[row]
        .get(col)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{}: no {col:?}", report.scenario))
}

#[test]
fn every_scenario_runs_at_a_tiny_size() {
    require("ffmpeg");
    let out = tmpdir("bench");
    let params = Params::tiny(PathBuf::from(env!("CARGO_BIN_EXE_gopbus")), out.clone());
    for name in ALL {
        let report = scenarios::run(name, &params).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(!report.rows.is_empty(), "{name}: no rows");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(json["scenario"], name);
        assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
        assert!(!report.markdown().is_empty());
        match name {
            "bus-publish" => assert!(num(&report, 0, "ns per push") > 0.0),
            "bus-local" => assert_eq!(num(&report, 0, "frames not delivered"), 0.0),
            "zero-copy" => {
                assert_eq!(num(&report, 0, "payload bytes copied"), 0.0, "payload was copied");
                assert_eq!(num(&report, 0, "delivered frames"), 2.0 * num(&report, 0, "frames in"));
            }
            "rtmp-fanout" => {
                assert_eq!(text(&report, 0, "players keeping up (worst run)"), "2/2");
                assert!(num(&report, 0, "delivered Mb/s") > 0.0);
                assert!(num(&report, 0, "server RSS MiB") > 0.0);
            }
            "latency" => {
                assert!(num(&report, 0, "frames") > 10.0);
                assert!(num(&report, 1, "frames") > 10.0);
                assert_eq!(num(&report, 0, "frames not received"), 0.0);
            }
            "ttff" => assert_eq!(num(&report, 1, "joins"), 2.0),
            "ingest" => assert!(num(&report, 0, "MB/s accepted") > 0.0),
            "quic-fanout" => {
                assert_eq!(text(&report, 1, "transport"), "QUIC via gopbus relay");
                assert!(num(&report, 1, "frames delivered %") > 90.0, "QUIC subscribers got too little");
                assert!(num(&report, 1, "RSS MiB") > 0.0);
                assert_eq!(num(&report, 1, "failed joins"), 0.0);
            }
            "hls-latency" => {
                assert!(num(&report, 0, "samples") > 0.0, "hls.js showed nothing");
                assert_eq!(num(&report, 0, "player errors"), 0.0);
                assert!(num(&report, 0, "blocking reloads") > 0.0, "hls.js did not use LL-HLS");
                assert!(num(&report, 0, "p50 ms") > 0.0);
            }
            "hls-clients" => {
                assert_eq!(num(&report, 0, "LL-HLS clients"), 0.0, "the baseline row comes first");
                assert_eq!(num(&report, 1, "LL-HLS clients"), 2.0);
                assert!(num(&report, 1, "parts/s per client") > 0.5, "clients got no parts");
                assert!(num(&report, 1, "blocking reloads/s") > 0.0);
                assert_eq!(num(&report, 1, "failed requests"), 0.0);
            }
            "webrtc-viewers" => {
                assert_eq!(num(&report, 0, "viewers"), 0.0, "the baseline row comes first");
                assert_eq!(num(&report, 1, "viewers"), 2.0);
                assert_eq!(num(&report, 1, "connected"), 2.0, "the WHEP viewers did not connect");
                assert!(num(&report, 1, "packets received") > 0.0, "no RTP reached the viewers");
                assert!(num(&report, 1, "send latency p50 ms") > 0.0);
            }
            "opus-transcode" => {
                assert!(num(&report, 0, "Opus packets") >= 90.0, "too few Opus packets for 2 s");
                assert!(num(&report, 1, "streams per core") > 0.0);
            }
            "webrtc-g2g" => {
                assert!(num(&report, 0, "frames read") > 30.0, "the page read too few stamped frames");
                assert!(num(&report, 0, "p50 ms") > 0.0);
            }
            "webrtc-av-sync" => {
                // The harness works: the page saw the flashes and heard beeps near one.
                // How near is the measurement, not asserted (a debug build under load lags).
                let seen = num(&report, 0, "flash/beep pairs") + num(&report, 0, "unpaired flashes");
                assert!(seen >= 3.0, "the page saw too few flashes");
                assert!(num(&report, 0, "flash/beep pairs") >= 1.0, "no beep was heard near any flash");
            }
            "transcode" => {
                assert!(num(&report, 0, "frames/s per core") > 30.0, "decoding slower than real time at 320x240");
                let last = report.rows.len() - 1;
                assert!(
                    num(&report, last, "real-time factor on one core") > 1.0,
                    "two small jobs slower than real time"
                );
            }
            other => panic!("scenario {other} has no check here"),
        }
    }
}

/// `relay-compare` is not in `all` (its point is a moq-relay built elsewhere);
/// its gopbus half runs here, the load generator on a thread (no bench binary).
#[test]
fn relay_compare_measures_a_gopbus_relay() {
    require("ffmpeg");
    let out = tmpdir("bench-relay-compare");
    let params = Params::tiny(PathBuf::from(env!("CARGO_BIN_EXE_gopbus")), out.clone());
    let report = scenarios::run("relay-compare", &params).unwrap_or_else(|e| panic!("relay-compare: {e:#}"));
    assert_eq!(report.rows.len(), 1, "one relay (no --moq-relay), one size");
    assert_eq!(text(&report, 0, "relay"), "gopbus relay");
    assert!(num(&report, 0, "frames delivered %") > 90.0, "the subscribers got too little");
    assert!(num(&report, 0, "delivered Mb/s") > 0.0);
    assert!(num(&report, 0, "RSS MiB") > 0.0);
    assert!(num(&report, 0, "CPU %") > 0.0);
    assert!(num(&report, 0, "latency p50 ms") > 0.0);
    assert!(num(&report, 0, "join p50 ms") > 0.0, "no join was probed");
    assert_eq!(num(&report, 0, "failed joins"), 0.0);
}

/// `--server-cpus` pins every thread of the server, started by the bench or
/// not; a list the machine cannot honour is an error, not a silent no-op.
#[test]
fn the_server_under_test_is_pinned_to_the_cpus_asked_for() {
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(cores >= 2, "this test needs two CPUs to tell a pinned process from one that is not");
    let target = bench::target::Target::start_gopbus(std::path::Path::new(env!("CARGO_BIN_EXE_gopbus")), 1).unwrap();
    let pid = target.pid.unwrap();
    let before = allowed(pid);
    assert!(before.len() > 1, "gopbus runs more than one thread: {before:?}");
    assert!(before.iter().all(|l| l != "1"), "gopbus started pinned already: {before:?}");
    bench::cpus::pin(pid, "1").unwrap();
    let after = allowed(pid);
    assert!(after.iter().all(|l| l == "1"), "a thread was left unpinned: {after:?}");
    let e = bench::cpus::pin(pid, &cores.to_string()).unwrap_err();
    assert!(format!("{e:#}").contains("could not pin"), "{e:#}");
    assert!(allowed(pid).iter().all(|l| l == "1"), "a failed pin changed the mask");
}

/// The CPUs each thread of `pid` may run on (`Cpus_allowed_list` in /proc).
fn allowed(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned()
        })
        .collect()
}
