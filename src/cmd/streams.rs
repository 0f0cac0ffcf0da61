//! `gopbus streams`: stream names and their secret keys, in SQLite or Redis.

use gopbus_store::Keys;

use crate::config::{CommonArgs, PublicArgs, RedisArgs};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    common: CommonArgs,
    /// Manage the keys kept in this Redis (shared by `gopbus ingest --redis` nodes) instead of DATA.
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    public: PublicArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// RTMP port to print in publish and play URLs.
    #[arg(long, env = "GOPBUS_PUBLIC_RTMP_PORT", default_value_t = 1935, global = true)]
    rtmp_port: u16,
    /// HTTP port to print in WHEP, HLS and watch-page URLs.
    #[arg(long, env = "GOPBUS_PUBLIC_HTTP_PORT", default_value_t = 8080, global = true)]
    http_port: u16,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Create a stream; prints its secret key and URLs.
    Create { name: String },
    /// List streams (never their keys).
    List,
    /// Delete a stream; its key stops working and a live publisher is disconnected.
    Delete { name: String },
    /// Give a stream a new key; the old one stops working and a live publisher using it is disconnected.
    Rotate { name: String },
}

/// Where publishers and players connect (the API's URLs, the same fields).
pub(crate) struct Urls(pub(crate) gopbus_control::PublicUrls);

/// Prints a new key with the settings for OBS and ffmpeg.
pub(crate) fn print_created(name: &str, key: &str, urls: &Urls, json: bool) {
    let c = urls.0.created(name, key);
    if json {
        println!("{}", serde_json::to_string(&c).unwrap_or_default());
    } else {
        println!("stream:      {name}");
        println!("stream key:  {key}   (secret: anyone with it can publish)");
        println!("OBS server:  {}", c.urls.publish_url);
        println!("ffmpeg:      ffmpeg -re -i INPUT -c copy -f flv {}", c.publish_full_url);
        println!("play:        {} (RTMP)", c.urls.play_url);
        println!("             {} (browser)", c.urls.watch_url);
        println!("             {} (HLS)", c.urls.hls_url);
    }
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let keys = super::open_keys(&a.common.data(&file), a.redis.resolve(&file).as_deref()).await?;
    let urls = Urls(gopbus_control::PublicUrls {
        host: a.public.resolve(&file),
        rtmp_port: a.rtmp_port,
        http_port: a.http_port,
    });
    manage(a.action, &keys, a.json, &urls).await
}

async fn manage(action: Action, store: &Keys, json: bool, urls: &Urls) -> anyhow::Result<()> {
    match action {
        Action::Create { name } => {
            let (rec, key) = store.create(&name).await?;
            print_created(&rec.name, &key, urls, json);
        }
        Action::List => {
            let list = store.list().await?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|r| {
                        let mut v =
                            serde_json::json!({"name": r.name, "created_at": r.created_at, "rotated_at": r.rotated_at});
                        if let (Some(o), Ok(serde_json::Value::Object(u))) =
                            (v.as_object_mut(), serde_json::to_value(urls.0.of(&r.name)))
                        {
                            o.extend(u);
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for r in list {
                    println!("{}\t{}", r.name, urls.0.of(&r.name).play_url);
                }
            }
        }
        Action::Delete { name } => {
            store.delete(&name).await?;
            if json {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                println!("deleted stream {name}");
            }
        }
        Action::Rotate { name } => {
            let key = store.rotate(&name).await?;
            print_created(&name, &key, urls, json);
        }
    }
    Ok(())
}
