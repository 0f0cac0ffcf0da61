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
    page_server_with(stream, hls_js, max_rate, "")
}

/// Like [`page_server`], with `script` (JavaScript statements, `hls` in
/// scope) run before the stream is loaded: event handlers that choose a
/// level or a track.
pub fn page_server_with(stream: &str, hls_js: Vec<u8>, max_rate: f64, script: &str) -> anyhow::Result<String> {
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
{script}
hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) window.hlsErrors.push(d.type + ':' + d.details); }});
hls.loadSource({stream:?});
hls.attachMedia(v);
v.play().catch(() => {{}});
</script>"#
    );
    serve_files(
        listener,
        vec![("/hls.js".into(), "application/javascript", hls_js), ("/".into(), "text/html", page.into_bytes())],
    )?;
    Ok(format!("http://{addr}/"))
}

/// Serves `files` on `listener` from a thread: a request is answered with
/// the first file whose path its path starts with, so `/` is the fallback.
pub fn serve_files(listener: TcpListener, files: Vec<(String, &'static str, Vec<u8>)>) -> anyhow::Result<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let Some((_, kind, body)) = files.iter().find(|(p, _, _)| path.starts_with(p.as_str())) else {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(body);
        }
    });
    Ok(())
}

/// Serves `page` (HTML) on a loopback port of its own, for every path: a
/// page on another origin than the server it talks to. Returns its origin
/// (`http://127.0.0.1:PORT`).
pub fn html_server(page: Vec<u8>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    serve_files(listener, vec![("/".into(), "text/html", page)])?;
    Ok(format!("http://{addr}"))
}
