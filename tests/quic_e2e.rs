//! The QUIC bus end to end with real processes: ffmpeg publishes over RTMP into
//! `gopbus serve`, `gopbus dump` subscribes over QUIC and writes FLV.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

fn dump(bus: &str, token: &str, ca: &std::path::Path, name: &str, out: &std::path::Path, extra: &[&str]) -> Proc {
    Proc::new(
        gopbus()
            .args(["dump", "--bus", bus, name, "--bus-token", token, "--bus-ca"])
            .arg(ca)
            .arg("--out")
            .arg(out)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn dump_over_quic_writes_a_clean_flv_from_the_join_point() {
    let server = Server::start("dump");
    let key = server.create_stream("cam");
    let (bus, token, ca) = server.bus();
    let fixture = Fixture::av(48000, 5);
    let publisher = ffmpeg_publish(&fixture, &server.url(&key));
    std::thread::sleep(Duration::from_millis(700));
    let out = tmpdir("dump-out").join("cam.flv");
    let d = dump(&bus, &token, &ca, "cam", &out, &[]);
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let r = d.wait_output(Duration::from_secs(20));
    assert!(r.status.success(), "dump failed: {}\nserver:\n{}", String::from_utf8_lossy(&r.stderr), server.log_text());
    let got = packets(&out, "v:0");
    let src = packets(&fixture, "v:0");
    assert!(got[0].key, "dump must start on a keyframe");
    assert!(got.len() >= src.len() - 40, "{} of {} frames", got.len(), src.len());
    assert_eq!(&src[src.len() - got.len()..], &got[..], "video from the join point");
    let audio = packets(&out, "a:0");
    let src_audio = packets(&fixture, "a:0");
    assert_eq!(&src_audio[src_audio.len() - audio.len()..], &audio[..], "audio from the join point");
    let s = streams(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!((s[0]["codec_name"].as_str(), s[1]["codec_name"].as_str()), ("h264", "aac"));
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "decode errors: {errors}");
}

#[test]
fn wrong_token_and_unknown_broadcast_fail_clearly() {
    let server = Server::start("dump-errors");
    let (bus, token, ca) = server.bus();
    let out = tmpdir("dump-errors-out").join("x.flv");
    let r = dump(&bus, "not-the-token", &ca, "cam", &out, &[]).wait_output(Duration::from_secs(20));
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("invalid bus token"), "{err}");
    assert!(server.log_text().contains("invalid bus token"));

    let started = std::time::Instant::now();
    let r = dump(&bus, &token, &ca, "nobody", &out, &[]).wait_output(Duration::from_secs(20));
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("not found"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "not found took {:?}", started.elapsed());
}
