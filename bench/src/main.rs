//! `cargo run -p bench --release -- SCENARIO|all [options]`. See `-- help`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use bench::media::StreamSpec;
use bench::scenarios::{self, Params, ALL};

#[global_allocator]
static ALLOC: bench::alloc::CountingAlloc = bench::alloc::CountingAlloc;

const HELP: &str = "\
usage: cargo run -p bench --release -- SCENARIO|all [options]

scenarios: bus-publish bus-local zero-copy rtmp-fanout latency ttff ingest quic-fanout hls-latency hls-clients
           webrtc-viewers opus-transcode webrtc-g2g webrtc-av-sync transcode
           relay-compare (not in `all`: a gopbus relay against moq-relay, see --moq-relay)

options:
  --runs N              repetitions of each measurement (default 3)
  --sizes A,B,C         the N list: players (rtmp-fanout), subscribers (bus-*, zero-copy), publishers (ingest),
                        keyframe intervals in s (hls-latency; default 2,8 with 0.5 s parts and 8 with 0.25 s),
                        LL-HLS clients (hls-clients; default 0,100,500), WebRTC viewers (webrtc-viewers;
                        default 0,1,10,50,100,200)
  --seconds S           length of each publishing measurement (default 10)
  --joins N             joins per run for ttff (default 30)
  --load-players N      extra players for latency's loaded half (default 100)
  --video WxH@KBPS      the test stream (default 640x360@1000)
  --gopbus PATH         the gopbus binary (default: next to this one, built if missing)
  --target URL          play URL of another RTMP server, rtmp://HOST:PORT/APP/NAME
  --publish-url URL     its publish URL (with the key, if any); needed with --target
  --server-pid PID      that server's pid, for CPU and memory figures
  --compare yes         with --target (rtmp-fanout, ingest): run every measurement on gopbus and on that
                        server alternately, in the same run, and report both with the ratio gopbus / other
  --server-cpus LIST    pin the server under test (every thread) to these CPUs, as taskset takes them (0, 0-1, 0,2):
                        the gopbus the bench starts once it listens, or --server-pid's process (rtmp-fanout,
                        latency, ttff, ingest); both servers of --compare alike
  --bench-cpus LIST     pin the bench itself (its players, publishers and load generators) to these CPUs
  --out DIR             where JSON reports go (default target/bench-results)
  --moq-relay PATH      relay-compare: a moq-relay binary to measure alternately with a gopbus relay
                        (default sizes 100,300; the stream 1280x720@3000 unless --video says otherwise)
";

fn parse() -> anyhow::Result<(Vec<String>, Params)> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "help".into());
    let mut p = Params::default();
    let mut target = None;
    let mut publish = None;
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => p.runs = value.parse::<usize>()?.max(1),
            "--sizes" => p.sizes = Some(value.split(',').map(str::parse).collect::<Result<_, _>>()?),
            "--seconds" => p.seconds = value.parse()?,
            "--joins" => p.joins = value.parse()?,
            "--load-players" => p.load_players = value.parse()?,
            "--video" => {
                let (size, kbps) = value.split_once('@').context("--video WxH@KBPS")?;
                let (w, h) = size.split_once('x').context("--video WxH@KBPS")?;
                p.spec =
                    StreamSpec { width: w.parse()?, height: h.parse()?, kbps: kbps.parse()?, ..StreamSpec::default() };
            }
            "--gopbus" => p.gopbus = Some(PathBuf::from(value)),
            "--target" => target = Some(value),
            "--publish-url" => publish = Some(value),
            "--server-pid" => p.server_pid = Some(value.parse()?),
            "--compare" => p.compare = matches!(value.as_str(), "yes" | "true" | "1"),
            "--out" => p.out = PathBuf::from(value),
            "--moq-relay" => p.moq_relay = Some(PathBuf::from(value)),
            "--server-cpus" => p.server_cpus = Some(value),
            "--bench-cpus" => p.bench_cpus = Some(value),
            other => bail!("unknown option {other}\n\n{HELP}"),
        }
    }
    p.external = match (target, publish) {
        (Some(t), Some(u)) => Some((t, u)),
        (None, None) => None,
        _ => bail!("--target and --publish-url go together"),
    };
    let list = match scenario.as_str() {
        "all" => ALL.iter().map(|s| (*s).to_owned()).collect(),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            std::process::exit(0);
        }
        one => vec![one.to_owned()],
    };
    if p.compare && (p.external.is_none() || p.server_pid.is_none()) {
        bail!("--compare needs --target, --publish-url and --server-pid (the other server's CPU is the point)");
    }
    if p.server_cpus.is_some() && p.external.is_some() && p.server_pid.is_none() {
        bail!("--server-cpus with --target needs --server-pid (the process to pin)");
    }
    if p.server_cpus.is_some() {
        // The others start their gopbus themselves; their reports would claim a pin they did not make.
        only_for("--server-cpus", &list, &["rtmp-fanout", "latency", "ttff", "ingest"])?;
    }
    if p.compare {
        only_for("--compare", &list, &["rtmp-fanout", "ingest"])?;
    }
    if p.external.is_some() {
        for s in &list {
            if matches!(
                s.as_str(),
                "bus-publish"
                    | "bus-local"
                    | "zero-copy"
                    | "quic-fanout"
                    | "relay-compare"
                    | "hls-latency"
                    | "hls-clients"
            ) {
                bail!("{s} measures gopbus's own bus in process; it cannot run against --target");
            }
        }
    }
    Ok((list, p))
}

/// Refuses `flag` for a scenario of `list` not among `scenarios`.
fn only_for(flag: &str, list: &[String], scenarios: &[&str]) -> anyhow::Result<()> {
    match list.iter().find(|s| !scenarios.contains(&s.as_str())) {
        Some(s) => bail!("{flag} is for {}, not {s}", scenarios.join(", ")),
        None => Ok(()),
    }
}

/// `whep-viewers HTTP NAME N SECONDS`: N WHEP viewers in this process (a
/// load generator for tests), their counts as JSON on stdout at the end.
fn whep_viewers(args: &[String]) -> anyhow::Result<()> {
    let [http, name, n, secs] = args else { bail!("usage: whep-viewers HTTP_ADDR NAME N SECONDS") };
    let (http, n, secs): (std::net::SocketAddr, usize, f64) = (http.parse()?, n.parse()?, secs.parse()?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let counts = rt.block_on(async {
        let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
        let (counts, task) = bench::whep::viewers(http, name, n, std::time::Duration::from_millis(20), until);
        let _ = task.await;
        counts
    });
    println!("{}", counts.json());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("whep-viewers") {
        return whep_viewers(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("__loadgen") {
        return bench::loadgen::main(&args[1..]);
    }
    let (list, params) = parse()?;
    if let Some(cpus) = &params.bench_cpus {
        // Before any runtime starts: its threads, and the processes the
        // scenarios spawn, inherit the mask.
        bench::cpus::pin(std::process::id(), cpus)?;
    }
    for name in list {
        eprintln!("running {name} …");
        scenarios::run(&name, &params)?;
    }
    Ok(())
}
