//! Benchmark reports: a markdown table on stdout and a JSON file, both saying
//! what machine ran it, at which gopbus commit, with which parameters.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// One row of results, columns in insertion order.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<(String, Value)>);

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a column.
    pub fn col(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.0.push((name.to_owned(), value.into()));
        self
    }

    /// A column's value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The machine a report was made on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical cores.
    pub cores: usize,
    /// CPU model name.
    pub cpu: String,
    /// CPU in use by anything on the machine, in % of one core, measured over
    /// half a second while the bench itself was idle, before the scenario.
    pub load_before: f64,
    /// The same, after the scenario.
    pub load_after: f64,
}

impl Machine {
    /// Reads the machine's description now.
    pub fn now() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load = idle_load();
        Self { cores, cpu, load_before: load, load_after: load }
    }

    /// Whether something else kept the machine busy: more than a quarter of a
    /// core in use while the bench was idle, before or after the scenario.
    pub fn was_busy(&self) -> bool {
        self.load_before > 25.0 || self.load_after > 25.0
    }
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU in use by the whole machine over the next half second, in % of one core.
pub fn idle_load() -> f64 {
    let Some((b0, t0)) = cpu_jiffies() else { return 0.0 };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let Some((b1, t1)) = cpu_jiffies() else { return 0.0 };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if t1 == t0 {
        return 0.0;
    }
    (b1 - b0) as f64 / (t1 - t0) as f64 * cores * 100.0
}

/// The gopbus commit the bench was built from (or "unknown").
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// A finished scenario.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The exact parameters.
    pub params: Value,
    /// The machine.
    pub machine: Machine,
    /// The rows of figures.
    pub rows: Vec<Row>,
    /// Explanations printed under the table.
    pub notes: Vec<String>,
}

impl Report {
    /// A report for `scenario` with its parameters; rows and notes come later.
    pub fn new(scenario: &str, params: Value) -> Self {
        Self { scenario: scenario.to_owned(), params, machine: Machine::now(), rows: Vec::new(), notes: Vec::new() }
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.scenario);
        s += &format!(
            "machine: {} cores, {}; other CPU load {:.0}% of a core before, {:.0}% after{}\n",
            self.machine.cores,
            self.machine.cpu,
            self.machine.load_before,
            self.machine.load_after,
            if self.machine.was_busy() { " — THE MACHINE WAS BUSY, figures are unreliable" } else { "" }
        );
        s += &format!("gopbus commit: {}\n", commit());
        s += &format!("parameters: {}\n\n", self.params);
        if let Some(first) = self.rows.first() {
            let names: Vec<&str> = first.0.iter().map(|(k, _)| k.as_str()).collect();
            s += &format!("| {} |\n", names.join(" | "));
            s += &format!("|{}\n", " ---: |".repeat(names.len()));
            for row in &self.rows {
                let cells: Vec<String> = names.iter().map(|n| row.get(n).map_or(String::new(), show)).collect();
                s += &format!("| {} |\n", cells.join(" | "));
            }
        }
        for n in &self.notes {
            s += &format!("\n{n}\n");
        }
        s
    }

    /// The report as JSON.
    pub fn json(&self) -> Value {
        let rows: Vec<Value> =
            self.rows.iter().map(|r| Value::Object(r.0.iter().cloned().collect::<Map<_, _>>())).collect();
        json!({
            "scenario": self.scenario,
            "commit": commit(),
            "machine": {
                "cores": self.machine.cores,
                "cpu": self.machine.cpu,
                "load_before": self.machine.load_before,
                "load_after": self.machine.load_after,
                "busy": self.machine.was_busy(),
            },
            "params": self.params,
            "rows": rows,
            "notes": self.notes,
        })
    }

    /// Prints the markdown and writes `DIR/SCENARIO.json`; returns the file.
    pub fn emit(&mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        self.machine.load_after = idle_load();
        println!("{}", self.markdown());
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_string_pretty(&self.json())?)?;
        println!("(written to {})\n", path.display());
        Ok(path)
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "–".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of a non-empty set of samples.
    pub fn of(samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return Self { median: 0.0, min: 0.0, max: 0.0 };
        }
        Self { median: s[s.len() / 2], min: s[0], max: s[s.len() - 1] }
    }

    /// "min–max".
    pub fn range(&self) -> String {
        if self.max >= 100.0 {
            format!("{:.0}–{:.0}", self.min, self.max)
        } else {
            format!("{:.2}–{:.2}", self.min, self.max)
        }
    }
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
