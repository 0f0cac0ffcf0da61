//! Browser playback for tests and benchmarks: the npm packages of
//! `tests/web` (hls.js, playwright-core, installed by `bash .ci/setup`) and a
//! page that plays a stream with hls.js, served from another loopback origin.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::bail;

/// `tests/web` with its `node_modules`, once Debian's chromium is there too.
pub fn web_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/web");
    if !dir.join("node_modules/hls.js").exists() || !dir.join("node_modules/playwright-core").exists() {
        bail!(
            "{}/node_modules is missing: run the README's test command (`bash .ci/test`), whose setup runs `npm ci` there",
            dir.display()
        );
    }
    if !Path::new("/usr/bin/chromium").exists() {
        bail!("Debian's chromium is required (`apt-get install chromium`; `bash .ci/test` installs it)");
    }
    Ok(dir)
}

/// Serves, on a loopback port of its own (another origin than the stream's),
/// a page where hls.js plays `stream` in low-latency mode, catching up with
/// the live edge at up to `max_rate` × speed (1 = hls.js's default: never).
/// The page keeps `window.hls` and its fatal errors in `window.hlsErrors`.
/// Returns the page's URL.
pub fn page_server(stream: &str, hls_js: Vec<u8>, max_rate: f64) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><video muted autoplay playsinline></video>
<script src="/hls.js"></script>
<script>
window.hlsErrors = [];
const v = document.querySelector('video');
const hls = new Hls({{ lowLatencyMode: true, maxLiveSyncPlaybackRate: {max_rate} }});
window.hls = hls;
hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) window.hlsErrors.push(d.type + ':' + d.details); }});
hls.loadSource({stream:?});
hls.attachMedia(v);
v.play().catch(() => {{}});
</script>"#
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let (kind, body): (&str, &[u8]) = if buf[..n].starts_with(b"GET /hls.js") {
                ("application/javascript", &hls_js)
            } else {
                ("text/html", page.as_bytes())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(body);
        }
    });
    Ok(format!("http://{addr}/"))
}
