//! HLS recordings uploaded to a real S3-compatible server (s3s-fs on
//! loopback, installed by `.ci/setup`): segments and playlists arrive in the
//! bucket as they are cut; the server goes away for a while mid-broadcast and
//! nothing is lost once it is back.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The s3s-fs binary: on PATH or in cargo's bin directory (`cargo install s3s-fs`).
fn s3s_fs() -> PathBuf {
    let mut places: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        places.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        places.push(PathBuf::from(h).join(".cargo/bin"));
    }
    places.into_iter().map(|d| d.join("s3s-fs")).find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "s3s-fs (an S3-compatible server) is required by this test and was not found: run the README's test \
             command (`bash .ci/test`), whose setup installs it (`cargo install s3s-fs --version 0.14.1 --features binary --locked`)"
        )
    })
}

struct S3 {
    proc: Option<Proc>,
    port: u16,
    root: PathBuf,
}

impl S3 {
    fn start(root: &Path, port: u16) -> Self {
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "gopbus", "--secret-key"])
            .arg("gopbus-secret")
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { proc: Some(Proc::new(child)), port, root: root.to_owned() }
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child().kill();
            let _ = p.child().wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        *self = Self::start(&self.root.clone(), self.port);
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn recordings_reach_the_bucket_and_survive_an_outage() {
    let root = tmpdir("s3");
    std::fs::create_dir_all(root.join("media")).unwrap();
    let port = free_port();
    let mut s3 = S3::start(&root, port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::start_with(
        "hls-s3",
        &[
            "--s3-bucket",
            "media",
            "--s3-prefix",
            "live",
            "--s3-endpoint",
            &endpoint,
            "--s3-region",
            "us-east-1",
            "--s3-access-key",
            "gopbus",
            "--s3-secret-key",
            "gopbus-secret",
        ],
    );
    let key = server.create_stream("cam");
    let fixture = Fixture::av(48000, 16);
    let publisher = ffmpeg_publish(&fixture, &server.url(&key));

    let recordings = server.data.join("recordings/cam");
    let session = || std::fs::read_dir(&recordings).ok()?.flatten().next().map(|e| e.file_name());
    wait_for("the recording to start", Duration::from_secs(20), || session().is_some());
    let session = session().unwrap();
    let local = recordings.join(&session);
    let bucket = root.join("media/live/cam").join(&session);
    // Segments arrive as they are cut (2 s target, 1 s GoPs).
    wait_for("seg-1.m4s in the bucket", Duration::from_secs(20), || bucket.join("seg-1.m4s").exists());
    assert!(bucket.join("init-1.mp4").exists(), "the init segment goes up before the first segment");
    // The playlist is uploaded after the segments it lists (its own PUT, a moment later).
    wait_for("the playlist to follow its segments", Duration::from_secs(10), || bucket.join("index.m3u8").exists());

    // The object store goes away for 5 s while the broadcast goes on.
    s3.stop();
    std::thread::sleep(Duration::from_secs(5));
    s3.restart();
    publisher.wait_output(Duration::from_secs(60));

    wait_for("the closed playlist in the bucket", Duration::from_secs(60), || {
        std::fs::read_to_string(bucket.join("index.m3u8")).unwrap_or_default().contains("#EXT-X-ENDLIST")
    });
    // Everything the local recording has is in the bucket, byte for byte.
    let mut files = 0;
    for f in std::fs::read_dir(&local).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let remote = std::fs::read(bucket.join(&name)).unwrap_or_else(|_| panic!("{name} missing in the bucket"));
        assert_eq!(remote, std::fs::read(f.path()).unwrap(), "{name} differs in the bucket");
        files += 1;
    }
    let playlist = std::fs::read_to_string(local.join("index.m3u8")).unwrap();
    let segments = playlist.lines().filter(|l| l.ends_with(".m4s")).count();
    assert!(segments >= 6, "{playlist}");
    assert_eq!(files, segments + 2, "init, segments and the playlist");
    // The uploader marks the session right after the closed playlist's PUT
    // returns, which can be a moment after the bucket has the file.
    wait_for("the finished upload to be marked", Duration::from_secs(10), || local.join(".uploaded").exists());
    let log = server.log_text();
    assert!(log.contains("S3 upload failing"), "the outage was not logged:\n{log}");
    assert!(log.contains("S3 upload working again"), "the recovery was not logged:\n{log}");
}
