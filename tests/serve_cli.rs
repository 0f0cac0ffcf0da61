//! The `gopbus` command line: first start, stream management, limits, shutdown.

mod common;

use std::time::Duration;

use bench::flv;
use bench::rtmp::Client;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_creates_demo_whose_key_publishes_and_metadata_reaches_players() {
    let server = Server::start("first");
    let out = std::fs::read_to_string(&server.stdout).unwrap();
    assert!(out.contains("stream:      demo"), "{out}");
    assert!(out.contains(&format!("OBS server:  rtmp://localhost:{}/live", server.rtmp.port())), "{out}");
    let key = out.lines().find_map(|l| l.strip_prefix("stream key:  ")).unwrap().split_whitespace().next().unwrap();

    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("demo").await.unwrap();
    let fixture = Fixture::av(48000, 3);
    let url = server.url(key);
    let p = tokio::task::spawn_blocking(move || ffmpeg_publish(&fixture, &url).wait_output(Duration::from_secs(60)));
    let mut frames = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(10), player.next_media()).await {
        frames += 1;
    }
    assert!(p.await.unwrap().status.success());
    assert!(frames > 200, "{frames}");
    // ffmpeg's onMetaData was kept and passed on.
    let meta = player.metadata.expect("no onMetaData reached the player");
    assert_eq!((meta.video_width, meta.video_height), (Some(640), Some(360)));
    assert_eq!(meta.audio_sample_rate, Some(48000));

    // A second start on the same data dir does not create another stream.
    drop(server);
}

#[test]
fn streams_commands_validate_and_manage_keys() {
    let dir = tmpdir("cli");
    let run = |args: &[&str]| gopbus().arg("streams").args(args).arg("--data").arg(&dir).output().unwrap();
    let out = run(&["create", "Bad Name"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid stream name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&["create", "alice", "--json", "--public-host", "media.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "alice");
    assert_eq!(v["publish_url"], "rtmp://media.example:1935/live");
    assert_eq!(v["play_url"], "rtmp://media.example:1935/live/alice");
    let key = v["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_"));

    let out = run(&["create", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let text = run(&["create", "bob"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("stream key:  sk_") && text.contains("play:        rtmp://localhost:1935/live/bob"),
        "{text}"
    );

    let list = run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&key), "list must not show keys");

    let rotated = run(&["rotate", "alice", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_ne!(v["key"].as_str().unwrap(), key);
    assert!(run(&["delete", "alice"]).status.success());
    let out = run(&["delete", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let server = Server::start_with("limit", &["--max-connections", "2"]);
    let _a = Client::connect(server.rtmp, "live").await.unwrap();
    let _b = Client::connect(server.rtmp, "live").await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), Client::connect(server.rtmp, "live")).await.unwrap();
    assert!(third.is_err(), "a third connection was served");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Client::connect(server.rtmp, "live").await.expect("a slot freed up");
    assert!(server.log_text().contains("too many connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_and_tells_players() {
    let mut server = Server::start("shutdown");
    let key = server.create_stream("s");
    let tags = flv::read(&Fixture::av(48000, 3)).unwrap();
    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("s").await.unwrap();
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    publisher.publish_tags(&tags[..tags.len() / 2], 4.0).await.unwrap();
    let ok = tokio::task::spawn_blocking(move || {
        let ok = server.terminate(Duration::from_secs(10));
        (ok, server)
    });
    let (ok, server) = ok.await.unwrap();
    assert!(ok, "gopbus did not exit cleanly on SIGTERM:\n{}", server.log_text());
    assert!(player.closed_by_server(Duration::from_secs(2)).await);
    assert!(publisher.closed_by_server(Duration::from_secs(2)).await);
    let log = server.log_text();
    assert!(log.contains("server shutting down") && log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_waits_for_a_late_publisher_past_the_idle_timeout() {
    let server = Server::start_with("wait", &["--idle-timeout", "1"]);
    let key = server.create_stream("w");
    let mut player = Client::connect(server.rtmp, "live").await.unwrap();
    player.play("w").await.unwrap();
    // A connection that does nothing at all is closed after the idle timeout...
    let mut idle = Client::connect(server.rtmp, "live").await.unwrap();
    assert!(idle.closed_by_server(Duration::from_secs(5)).await);
    // ...but a player waiting for its publisher is not.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tags = flv::read(&Fixture::av(48000, 3)).unwrap();
    let mut publisher = Client::connect(server.rtmp, "live").await.unwrap();
    publisher.publish(&key).await.unwrap();
    publisher.publish_tags(&tags, 2.0).await.unwrap();
    drop(publisher);
    let mut frames = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(5), player.next_media()).await {
        frames += 1;
    }
    assert!(frames > 200, "the waiting player got {frames} messages");
}

#[test]
fn flags_override_environment_override_config_file() {
    let dir = tmpdir("precedence");
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = dir.join("gopbus.toml");
    std::fs::write(
        &config,
        format!(
            "rtmp = \"127.0.0.1:{file_port}\"\nhttp = \"127.0.0.1:{}\"\nquic = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let start = |env: Option<u16>, flag: Option<u16>| {
        let mut cmd = gopbus();
        cmd.args(["serve", "--config"]).arg(&config).arg("--data").arg(&dir);
        if let Some(p) = env {
            cmd.env("GOPBUS_RTMP", format!("127.0.0.1:{p}"));
        }
        if let Some(p) = flag {
            cmd.args(["--rtmp", &format!("127.0.0.1:{p}")]);
        }
        Proc::new(cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap())
    };
    let listening = |port: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    let p = start(None, None);
    assert!(listening(file_port), "config file not used");
    drop(p);
    let p = start(Some(env_port), None);
    assert!(listening(env_port), "environment did not override the file");
    drop(p);
    let p = start(Some(env_port), Some(flag_port));
    assert!(listening(flag_port), "flag did not override the environment");
    drop(p);
}
