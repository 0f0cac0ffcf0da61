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

/// Where publishers and players connect.
pub(crate) struct Urls {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Urls {
    fn server(&self) -> String {
        format!("rtmp://{}:{}/live", self.host, self.port)
    }
    fn play(&self, name: &str) -> String {
        format!("rtmp://{}:{}/live/{name}", self.host, self.port)
    }
}

/// Prints a new key with the settings for OBS and ffmpeg.
pub(crate) fn print_created(name: &str, key: &str, urls: &Urls, json: bool) {
    if json {
        let v = serde_json::json!({
            "name": name,
            "key": key,
            "publish_url": urls.server(),
            "publish_full_url": format!("{}/{key}", urls.server()),
            "play_url": urls.play(name),
        });
        println!("{v}");
    } else {
        println!("stream:      {name}");
        println!("stream key:  {key}   (secret: anyone with it can publish)");
        println!("OBS server:  {}", urls.server());
        println!("ffmpeg:      ffmpeg -re -i INPUT -c copy -f flv {}/{key}", urls.server());
        println!("play:        {}", urls.play(name));
    }
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let file = a.common.file()?;
    let keys = super::open_keys(&a.common.data(&file), a.redis.resolve(&file).as_deref()).await?;
    let urls = Urls { host: a.public.resolve(&file), port: a.rtmp_port };
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
                    .map(|r| serde_json::json!({"name": r.name, "created_at": r.created_at, "rotated_at": r.rotated_at, "play_url": urls.play(&r.name)}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for r in list {
                    println!("{}\t{}", r.name, urls.play(&r.name));
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
