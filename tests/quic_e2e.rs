//! The QUIC bus end to end with real processes: ffmpeg publishes over RTMP into
//! `gopbus serve`, `gopbus dump` subscribes over QUIC and writes FLV.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn dump_over_quic_writes_a_clean_flv_from_the_join_point() {
    let server = Server::start("dump");
    let key = server.create_stream("cam");
    let (bus, token, ca) = server.bus();
    let fixture = Fixture::av(48000, 5);
    let publisher = ffmpeg_publish(&fixture, &server.url(&key));
    std::thread::sleep(Duration::from_millis(700));
    let out = tmpdir("dump-out").join("cam.flv");
    // `dump` needs only the subscribe-only token (kept like the bus token, owner-only).
    let reader_file = server.data.join("bus-subscribe-token");
    let reader = std::fs::read_to_string(&reader_file).unwrap().trim().to_owned();
    assert_ne!(reader, token);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&reader_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(server.data.join("bus-token")).unwrap().permissions().mode() & 0o777, 0o600);
    let d = dump(&bus, &reader, &ca, "cam", &out, &[]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_subscriber_skips_gops_while_others_get_every_frame() {
    use bench::rtmp::Client;
    let mut server = Server::start("slow-quic");
    let key = server.create_stream("fat");
    let (bus, token, ca) = server.bus();
    // 3 MB/s: a GoP (1 s) is larger than a stream's receive window.
    let tags = bench::flv::synthetic_video(150, 100_000, 30);
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    let out = tmpdir("slow-quic-out");
    let feed = tokio::spawn(async move {
        publisher.publish_tags(&tags[..31], 1.0).await.unwrap();
        (publisher, tags)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let files: Vec<_> = (0..3).map(|i| out.join(format!("s{i}.flv"))).collect();
    let mut dumps = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let extra: &[&str] = if i == 2 { &["--max-rate", "300000"] } else { &[] };
        dumps.push(dump(&bus, &token, &ca, "fat", f, extra));
    }
    let (mut publisher, tags) = feed.await.unwrap();
    publisher.publish_tags(&tags[31..], 1.0).await.unwrap();
    drop(publisher);
    let mut results = Vec::new();
    for d in dumps {
        results.push(tokio::task::spawn_blocking(move || d.wait_output(Duration::from_secs(60))).await.unwrap());
    }
    for r in &results {
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let count = |f: &std::path::Path| packets(f, "v:0").len();
    let (a, b, slow) = (count(&files[0]), count(&files[1]), count(&files[2]));
    // The normal subscribers joined in the first GoP: every frame from there on.
    assert!(a >= 120 && a == b, "normal subscribers got {a} and {b} frames");
    assert!(slow < a - 30, "the slow subscriber got {slow} of {a} frames: it should have skipped GoPs");
    let log = server.log_text();
    assert!(log.contains("remote subscriber skipped GoPs"), "{log}");
    // The node's memory stayed bounded: 15 MB went through it; it never held much
    // more than its GoP window (3 GoPs of 3 MB) and the QUIC send windows.
    let peak = server.peak_rss_kib();
    assert!(peak < 80 * 1024, "peak RSS {peak} KiB");
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it, with openssl.
/// Returns (CA certificate, server certificate, server key).
fn ca_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = require("openssl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(openssl).args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gopbus test CA"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn a_ca_signed_certificate_is_served_and_clients_trust_it_through_the_ca() {
    let certs = tmpdir("certs");
    let (ca, cert, key) = ca_signed_certificate(&certs);
    let server = Server::start_with(
        "real-cert",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--bus-token", "tok"],
    );
    assert!(!server.data.join("bus-cert.pem").exists(), "a self-signed certificate was made anyway");
    let stream_key = server.create_stream("cam");
    let bus = format!("quic://127.0.0.1:{}", server.quic.port());
    let fixture = Fixture::av(48000, 4);
    let publisher = ffmpeg_publish(&fixture, &server.url(&stream_key));
    std::thread::sleep(Duration::from_millis(700));
    let out = tmpdir("real-cert-out").join("cam.flv");
    let d = dump(&bus, "tok", &ca, "cam", &out, &[]);
    // A client that trusts another CA refuses the server.
    let (other_ca, _, _) = ca_signed_certificate(&tmpdir("other-certs"));
    let refused =
        dump(&bus, "tok", &other_ca, "cam", &tmpdir("x").join("x.flv"), &[]).wait_output(Duration::from_secs(20));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let p = publisher.wait_output(Duration::from_secs(60));
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let r = d.wait_output(Duration::from_secs(20));
    assert!(r.status.success(), "dump failed: {}", String::from_utf8_lossy(&r.stderr));
    let got = packets(&out, "v:0");
    assert!(got.len() >= 60 && got[0].key, "{} frames", got.len());
    assert!(decode_errors(&out).is_empty());
}
