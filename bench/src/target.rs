//! The server under test: a `gopbus serve` the bench starts (and stops) on
//! loopback, or any other RTMP server given by URL.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// `rtmp://HOST:PORT/APP/NAME`, resolved.
#[derive(Debug, Clone)]
pub struct RtmpUrl {
    /// Server address.
    pub addr: SocketAddr,
    /// Application (`live`).
    pub app: String,
    /// Stream name or key.
    pub name: String,
}

impl RtmpUrl {
    /// Parses and resolves an RTMP URL.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("rtmp://").with_context(|| format!("{url}: not an rtmp:// URL"))?;
        let (hostport, path) = rest.split_once('/').with_context(|| format!("{url}: no /APP/NAME"))?;
        let (app, name) = path.split_once('/').with_context(|| format!("{url}: no /NAME after the app"))?;
        let hostport = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:1935") };
        let addr = hostport.to_socket_addrs()?.next().with_context(|| format!("{url}: host does not resolve"))?;
        Ok(Self { addr, app: app.to_owned(), name: name.to_owned() })
    }

    /// The same server and app with another stream name.
    pub fn with_name(&self, name: &str) -> Self {
        Self { name: name.to_owned(), ..self.clone() }
    }
}

/// Where the scenarios publish and play.
pub struct Target {
    /// Play URL of stream `i` (`i` = 0 for single-stream scenarios).
    pub play: Vec<RtmpUrl>,
    /// Publish URL (with the key) of stream `i`.
    pub publish: Vec<RtmpUrl>,
    /// The server process, for CPU and memory figures (known for gopbus; `--server-pid` otherwise).
    pub pid: Option<u32>,
    /// A human name ("gopbus" or the URL).
    pub name: String,
    /// gopbus's HTTP address (HLS), when the bench started it.
    pub http: Option<SocketAddr>,
    child: Option<Child>,
    data: Option<PathBuf>,
}

impl Target {
    /// Starts `gopbus serve` on free loopback ports with `streams` streams.
    pub fn start_gopbus(binary: &Path, streams: usize) -> anyhow::Result<Self> {
        Self::start_gopbus_with(binary, streams, &[])
    }

    /// [`start_gopbus`](Self::start_gopbus) with more flags for `serve`.
    pub fn start_gopbus_with(binary: &Path, streams: usize, flags: &[String]) -> anyhow::Result<Self> {
        let data = std::env::temp_dir().join(format!("gopbus-bench-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&data)?;
        let mut play = Vec::new();
        let mut publish = Vec::new();
        let rtmp = free_addr()?;
        for i in 0..streams.max(1) {
            let name = format!("bench{i}");
            let out = Command::new(binary)
                .args(["streams", "create", &name, "--json", "--data"])
                .arg(&data)
                .output()
                .with_context(|| format!("running {}", binary.display()))?;
            if !out.status.success() {
                bail!("gopbus streams create: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let key = v["key"].as_str().context("no key")?.to_owned();
            play.push(RtmpUrl { addr: rtmp, app: "live".into(), name });
            publish.push(RtmpUrl { addr: rtmp, app: "live".into(), name: key });
        }
        let http = free_addr()?;
        let child = Command::new(binary)
            .args(["serve", "--rtmp", &rtmp.to_string()])
            .args(["--http", &http.to_string(), "--quic", &free_addr()?.to_string()])
            .args(flags)
            .args(["--max-connections", "4096", "--max-connections-per-ip", "4096", "--data"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let target = Self {
            play,
            publish,
            pid: Some(pid),
            name: "gopbus".into(),
            http: Some(http),
            child: Some(child),
            data: Some(data),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(rtmp).is_err() {
            if Instant::now() > deadline {
                bail!("gopbus did not start listening on {rtmp}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(target)
    }

    /// Another RTMP server: play at `play`, publish at `publish`. Stream `i > 0`
    /// appends `i` to both names.
    pub fn external(play: &str, publish: &str, pid: Option<u32>, streams: usize) -> anyhow::Result<Self> {
        let p = RtmpUrl::parse(play)?;
        let q = RtmpUrl::parse(publish)?;
        let name = |base: &str, i: usize| if i == 0 { base.to_owned() } else { format!("{base}{i}") };
        Ok(Self {
            play: (0..streams.max(1)).map(|i| p.with_name(&name(&p.name, i))).collect(),
            publish: (0..streams.max(1)).map(|i| q.with_name(&name(&q.name, i))).collect(),
            pid,
            name: play.to_owned(),
            http: None,
            child: None,
            data: None,
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.data.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The gopbus binary of this workspace, built (or found up to date) with the
/// same profile as the bench binary.
pub fn default_gopbus() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let release = exe.components().any(|c| c.as_os_str() == "release");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", "gopbus", "--bin", "gopbus"]).current_dir(workspace);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build for gopbus")?;
    if !status.success() {
        bail!("building gopbus failed");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from);
    let built = target_dir.join(if release { "release" } else { "debug" }).join("gopbus");
    if !built.exists() {
        bail!("{} not found after building", built.display());
    }
    Ok(built)
}
