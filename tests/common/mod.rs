//! Helpers for end-to-end tests: the real `gopbus` binary, real ffmpeg/ffprobe,
//! all on 127.0.0.1 with free ports. Every child process is kept by handle and
//! killed by handle.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Path of a required external tool; panics with instructions when it is missing.
pub fn require(tool: &str) -> &'static str {
    static FOUND: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let map = FOUND.get_or_init(Default::default);
    let ok = *map.lock().unwrap().entry(tool.to_owned()).or_insert_with(|| {
        let flag = match tool {
            "openssl" => "version",
            "curl" => "--version",
            t if t.starts_with("redis") => "--version",
            _ => "-version",
        };
        Command::new(tool).arg(flag).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    });
    assert!(ok, "`{tool}` is required by this test and was not found on PATH: run the README's test command (`bash .ci/test`), which installs it (`apt-get install ffmpeg redis-server redis-tools openssl curl`)");
    match tool {
        "ffmpeg" => "ffmpeg",
        "ffprobe" => "ffprobe",
        "redis-server" => "redis-server",
        "redis-cli" => "redis-cli",
        "openssl" => "openssl",
        "curl" => "curl",
        other => panic!("unknown tool {other}"),
    }
}

/// A fresh directory for one test.
pub fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gopbus-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port free on 127.0.0.1 right now (TCP and UDP), below Linux's ephemeral
/// range (32768–60999): a port the kernel hands out for port 0 can be taken
/// by any outgoing connection (ffmpeg's, a browser's) between this call and
/// the server binding it. Each call of a test process takes the next
/// candidate, from an offset set by the process id.
pub fn free_port() -> u16 {
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN)
}

/// A child process that is killed (by its handle) when dropped.
pub struct Proc(Option<Child>);

impl Proc {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until dropped")
    }

    /// Waits for the child to exit within `limit` and returns its output.
    pub fn wait_output(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        while self.child().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `gopbus serve`.
pub struct Server {
    proc: Proc,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub data: PathBuf,
    pub log: PathBuf,
    pub stdout: PathBuf,
}

pub fn gopbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gopbus"))
}

impl Server {
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &[])
    }

    pub fn start_with(tag: &str, extra: &[&str]) -> Self {
        Self::start_in(tmpdir(tag), extra)
    }

    /// A server on data directory `data` (a restart keeps what is there; the
    /// logs are appended to).
    pub fn start_in(data: PathBuf, extra: &[&str]) -> Self {
        let rtmp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let quic: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = data.join("serve.log");
        let stdout = data.join("serve.out");
        let child = gopbus()
            .args(["serve", "--rtmp", &rtmp.to_string(), "--http", &http.to_string(), "--quic", &quic.to_string()])
            .arg("--data")
            .arg(&data)
            .args(extra)
            .env("RUST_LOG", "info,gopbus_ingest=debug")
            .stdout(std::fs::File::options().create(true).append(true).open(&stdout).unwrap())
            .stderr(std::fs::File::options().create(true).append(true).open(&log).unwrap())
            .spawn()
            .expect("spawning gopbus serve");
        let server = Self { proc: Proc::new(child), rtmp, http, quic, data, log, stdout };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(self.rtmp).is_ok() && TcpStream::connect(self.http).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gopbus serve did not start; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn streams(&self, args: &[&str]) -> Output {
        gopbus().arg("streams").args(args).arg("--data").arg(&self.data).output().unwrap()
    }

    /// Creates a stream and returns its key.
    pub fn create_stream(&self, name: &str) -> String {
        let out = self.streams(&["create", name, "--json"]);
        assert!(out.status.success(), "streams create failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["key"].as_str().unwrap().to_owned()
    }

    pub fn rotate(&self, name: &str) -> String {
        let out = self.streams(&["rotate", name, "--json"]);
        assert!(out.status.success(), "streams rotate failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["key"].as_str().unwrap().to_owned()
    }

    /// The QUIC bus URL, token and certificate of this node.
    pub fn bus(&self) -> (String, String, PathBuf) {
        let token = std::fs::read_to_string(self.data.join("bus-token")).expect("bus token file").trim().to_owned();
        (format!("quic://127.0.0.1:{}", self.quic.port()), token, self.data.join("bus-cert.pem"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("rtmp://{}/live/{path}", self.rtmp)
    }

    /// Sends SIGTERM to this server's process (by its pid, from our own handle) and
    /// waits for it to exit; returns whether it exited successfully.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let pid = self.proc.child().id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.proc.child().try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident memory of the server process so far, in KiB.
    pub fn peak_rss_kib(&mut self) -> u64 {
        let pid = self.proc.child().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.proc.child().try_wait().unwrap().is_none()
    }
}

/// Test media made once per test binary with ffmpeg.
pub struct Fixture;

impl Fixture {
    /// H.264 High profile with B-frames (GoP 1 s at 30 fps) and AAC at `rate` Hz stereo, `secs` long.
    pub fn av(rate: u32, secs: u32) -> PathBuf {
        Self::av_with(rate, secs, 2, 30)
    }

    /// H.264 High profile without B-frames (what WebRTC viewers are sent as
    /// it is), keyframes 6 s apart as OBS sends them, AAC at `rate` Hz stereo.
    pub fn av_no_bframes(rate: u32, secs: u32) -> PathBuf {
        Self::av_with(rate, secs, 0, 180)
    }

    fn av_with(rate: u32, secs: u32, bframes: u32, gop: u32) -> PathBuf {
        let name = if (bframes, gop) == (2, 30) {
            format!("av-{rate}-{secs}.flv")
        } else {
            format!("av-{rate}-{secs}-bf{bframes}-g{gop}.flv")
        };
        Self::make(&name, |out| {
            vec![
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                "testsrc2=size=640x360:rate=30".into(),
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                format!("sine=frequency=440:sample_rate={rate}"),
                "-t".into(),
                secs.to_string(),
                "-c:v".into(),
                "libx264".into(),
                "-profile:v".into(),
                "high".into(),
                "-bf".into(),
                bframes.to_string(),
                "-g".into(),
                gop.to_string(),
                "-keyint_min".into(),
                gop.to_string(),
                "-sc_threshold".into(),
                "0".into(),
                "-pix_fmt".into(),
                "yuv420p".into(),
                "-preset".into(),
                "veryfast".into(),
                "-c:a".into(),
                "aac".into(),
                "-ac".into(),
                "2".into(),
                "-b:a".into(),
                "96k".into(),
                "-f".into(),
                "flv".into(),
                out.to_string_lossy().into_owned(),
            ]
        })
    }

    /// Audio only: AAC 44.1 kHz.
    pub fn audio_only(secs: u32) -> PathBuf {
        Self::make(&format!("audio-{secs}.flv"), |out| {
            vec![
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                "sine=frequency=300:sample_rate=44100".into(),
                "-t".into(),
                secs.to_string(),
                "-c:a".into(),
                "aac".into(),
                "-f".into(),
                "flv".into(),
                out.to_string_lossy().into_owned(),
            ]
        })
    }

    /// Video only (H.264 Baseline, no audio) at `size`, `secs` long.
    pub fn video_only(size: &str, secs: u32) -> PathBuf {
        Self::make(&format!("video-{size}-{secs}.flv"), |out| {
            vec![
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                format!("testsrc2=size={size}:rate=30"),
                "-t".into(),
                secs.to_string(),
                "-c:v".into(),
                "libx264".into(),
                "-profile:v".into(),
                "baseline".into(),
                "-g".into(),
                "30".into(),
                "-pix_fmt".into(),
                "yuv420p".into(),
                "-f".into(),
                "flv".into(),
                out.to_string_lossy().into_owned(),
            ]
        })
    }

    /// What OBS sends with its default settings, at 720p: H.264 High with
    /// B-frames (3, pyramid), keyframes at irregular times 2–3.5 s apart
    /// (shortened from OBS's 5–8 s to keep tests short; the alignment logic is
    /// the same), AAC 48 kHz stereo. `KEYFRAMES_720P` lists the keyframe times.
    pub fn obs_720p(secs: u32) -> PathBuf {
        let keys: Vec<String> = KEYFRAMES_720P.iter().map(|ms| format!("{:.3}", *ms as f64 / 1000.0)).collect();
        Self::make(&format!("obs-720p-{secs}.flv"), |out| {
            [
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1280x720:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                &secs.to_string(),
                "-c:v",
                "libx264",
                "-profile:v",
                "high",
                "-bf",
                "3",
                "-g",
                "600",
                "-sc_threshold",
                "0",
                "-force_key_frames",
                &keys.join(","),
                "-b:v",
                "2500k",
                "-pix_fmt",
                "yuv420p",
                "-preset",
                "veryfast",
                "-c:a",
                "aac",
                "-ac",
                "2",
                "-b:a",
                "128k",
                "-f",
                "flv",
                &out.to_string_lossy(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        })
    }

    fn make(name: &str, args: impl FnOnce(&Path) -> Vec<String>) -> PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        static LOCK: Mutex<()> = Mutex::new(());
        let dir = DIR.get_or_init(|| tmpdir("fixtures"));
        let path = dir.join(name);
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !path.exists() {
            let out = Command::new(require("ffmpeg")).args(["-v", "error", "-y"]).args(args(&path)).output().unwrap();
            assert!(out.status.success(), "making fixture {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        path
    }
}

/// Keyframe times of [`Fixture::obs_720p`], ms (every one a multiple of 1000/30 ms, rounded).
pub const KEYFRAMES_720P: [i64; 16] =
    [0, 2500, 4767, 8000, 10200, 12967, 15000, 18167, 20400, 22833, 25500, 28000, 30333, 33500, 36000, 38667];

/// One packet as ffprobe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub pts: i64,
    pub dts: i64,
    pub key: bool,
    pub size: usize,
}

/// The packets of stream `sel` ("v:0" or "a:0") of a file.
pub fn packets(path: &Path, sel: &str) -> Vec<Packet> {
    let out = Command::new(require("ffprobe"))
        .args(["-v", "error", "-select_streams", sel, "-show_entries", "packet=pts,dts,flags,size", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Packet {
                pts: f[0].parse().unwrap_or(i64::MIN),
                dts: f[1].parse().unwrap_or(i64::MIN),
                size: f[2].parse().unwrap_or(0),
                key: f[3].contains('K'),
            }
        })
        .collect()
}

/// `codec_name,width,height,sample_rate,channels` of each stream.
pub fn streams(path: &Path) -> Vec<HashMap<String, String>> {
    let out = Command::new(require("ffprobe"))
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,profile,width,height,sample_rate,channels",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect()
        })
        .collect()
}

/// Everything ffmpeg reports at `-v error` while decoding the whole file.
pub fn decode_errors(path: &Path) -> String {
    let out = Command::new(require("ffmpeg"))
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts `ffmpeg -i URL -c copy OUT.flv` (a player recording to a file).
pub fn ffmpeg_play(url: &str, out: &Path) -> Proc {
    Proc::new(
        Command::new(require("ffmpeg"))
            .args(["-v", "error", "-y", "-i", url, "-c", "copy", "-copyts", "-f", "flv"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Starts `ffmpeg -re -i IN -c copy -f flv URL` (a real-time publisher).
pub fn ffmpeg_publish(input: &Path, url: &str) -> Proc {
    Proc::new(
        Command::new(require("ffmpeg"))
            .args(["-v", "error", "-re", "-i"])
            .arg(input)
            .args(["-c", "copy", "-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A real redis-server on a free loopback port, with no persistence.
pub struct Redis {
    _proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A redis-server on `port` (to restart one where nodes expect it).
    pub fn start_on(port: u16) -> Self {
        let dir = tmpdir("redis");
        let child = Command::new(require("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let redis = Self { _proc: Proc::new(child), port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs redis-cli against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(require("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The bus token every node of a test cluster shares.
pub const TOKEN: &str = "cluster-secret";

/// A running bus node (`gopbus relay` or `gopbus ingest`) with its data directory and log.
pub struct Node {
    pub proc: Proc,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Node {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `gopbus ARGS --data DIR` and waits until its log says `ready`.
pub fn spawn(tag: &str, args: &[String], ready: &str) -> Node {
    let dir = tmpdir(tag);
    let log = dir.join("node.log");
    let child = gopbus()
        .args(args)
        .arg("--data")
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let node = Node { proc: Proc::new(child), dir, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.log_text().contains(ready) {
        assert!(Instant::now() < deadline, "{tag} did not start:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

/// A free UDP port on 127.0.0.1.
pub fn udp_port() -> u16 {
    free_port()
}

/// Starts `gopbus relay` on 127.0.0.1:`port` with the shared token.
pub fn relay(tag: &str, port: u16, extra: &[String]) -> Node {
    let mut args =
        vec!["relay".to_owned(), "--quic".into(), format!("127.0.0.1:{port}"), "--bus-token".into(), TOKEN.into()];
    args.extend_from_slice(extra);
    spawn(tag, &args, "gopbus relay serving")
}

/// Starts `gopbus dump --bus BUS NAME --bus-token TOKEN --bus-ca CA --out OUT EXTRA...`
/// (stderr piped, for its log).
pub fn dump(bus: &str, token: &str, ca: &Path, name: &str, out: &Path, extra: &[&str]) -> Proc {
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

/// One HTTP/1.1 request on a connection of its own: (status, head, body),
/// a chunked body decoded.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}{length}Connection: close\r\n\r\n").unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

/// A UDP link between a bus client and a node that the test can cut: it
/// forwards datagrams from 127.0.0.1:`port` to `target` and back (one upstream
/// socket per client address), and drops every datagram both ways while cut.
/// It runs on threads of its own until dropped.
pub struct UdpLink {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpLink {
    pub fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::AtomicBool;
        let front = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        front.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let port = front.local_addr().unwrap().port();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (c, s) = (cut.clone(), stop.clone());
        let main = std::thread::spawn(move || {
            let mut peers: HashMap<SocketAddr, Arc<std::net::UdpSocket>> = HashMap::new();
            let mut backs = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = front.recv_from(&mut buf) else { continue };
                let up = peers.entry(from).or_insert_with(|| {
                    let up = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
                    up.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                    up.connect(target).unwrap();
                    let (up2, front2, c2, s2) = (up.clone(), front.clone(), c.clone(), s.clone());
                    backs.push(std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        while !s2.load(Ordering::Relaxed) {
                            let Ok(n) = up2.recv(&mut buf) else { continue };
                            if !c2.load(Ordering::Relaxed) {
                                let _ = front2.send_to(&buf[..n], from);
                            }
                        }
                    }));
                    up
                });
                if !c.load(Ordering::Relaxed) {
                    let _ = up.send(&buf[..n]);
                }
            }
            for b in backs {
                let _ = b.join();
            }
        });
        Self { port, cut, stop, threads: vec![main] }
    }

    /// Cuts the link (`true`: every datagram dropped) or mends it.
    pub fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::Relaxed);
    }

    pub fn url(&self) -> String {
        format!("quic://127.0.0.1:{}", self.port)
    }
}

impl Drop for UdpLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
