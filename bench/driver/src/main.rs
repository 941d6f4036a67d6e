//! `msgtier-bench`: msgtier's benchmark driver. `cargo run --release -p msgtier-bench`
//! builds the `msgtier` binary (and the libp2p reference in `bench/libp2p-ref`, if present),
//! starts real `msgtier` processes on 127.0.0.1 with generated configs in a temp dir, drives them
//! over their HTTP API (and one node in-process through its RelayActor), stops them, and prints
//! one Markdown table: metric | msgtier | libp2p | ratio | ceiling (machine) | target, each cell
//! the median over `--runs` runs with the min-max range.
//!
//! Map: [`scenario`] holds the measurements (one module per `--only` group), [`node`] the node
//! processes, [`http`] and [`load`] the client side, [`stats`] and [`report`] the numbers and
//! the table, [`cleanup`] the guarantee that no process outlives the driver. BENCHMARKS.md says
//! how to read the table.

mod cleanup;
mod http;
mod load;
mod node;
mod report;
mod scenario;
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use scenario::Ctx;
use stats::Results;

/// The measurement groups, in the order a run executes them (`--only` names).
const GROUPS: [&str; 12] = [
    "ceiling", "rtt", "rate", "durable", "inproc", "bulk", "lossy", "relay", "libp2p", "recovery",
    "mesh", "topics",
];

const USAGE: &str = "\
usage: cargo run --release -p msgtier-bench -- [options]

  --runs N          runs of every measurement (default 3; medians and min-max are shown)
  --quick           short smoke run: 1 run, small counts, a 10-node mesh
  --only G[,G..]    only these groups: ceiling, rtt, rate (also: rss), durable, inproc, bulk, lossy
                    (root only), relay, libp2p, recovery, mesh, topics (ceiling always runs; the
                    libp2p modes a group compares with run with it)
  --no-build        do not run cargo build first (use the binaries as they are)
  --node-log LEVEL  log level in node configs (default warn; info adds a line per message)
  --keep            keep the temp dir with configs and node logs
  -h, --help        this text";

/// Command-line options.
struct Options {
    /// Runs of each measurement.
    runs: usize,
    /// Smoke-run sizes.
    quick: bool,
    /// Groups to run.
    only: Vec<&'static str>,
    /// Skip `cargo build`.
    no_build: bool,
    /// Node log level.
    node_log: String,
    /// Keep the temp dir.
    keep: bool,
}

fn parse_args() -> Result<Option<Options>> {
    let mut o = Options {
        runs: 3,
        quick: false,
        only: GROUPS.to_vec(),
        no_build: false,
        node_log: "warn".into(),
        keep: false,
    };
    let mut runs_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--runs" => {
                let v = args.next().context("--runs needs a number")?;
                o.runs = v.parse().context("--runs needs a number")?;
                if !(1..=20).contains(&o.runs) {
                    bail!("--runs must be 1 to 20");
                }
                runs_given = true;
            }
            "--quick" => o.quick = true,
            "--no-build" => o.no_build = true,
            "--keep" => o.keep = true,
            "--node-log" => {
                o.node_log = args.next().context("--node-log needs a level")?;
            }
            "--only" => {
                let v = args.next().context("--only needs a group")?;
                let mut only = vec!["ceiling"];
                for g in v.split(',').map(str::trim) {
                    let g = if g == "rss" { "rate" } else { g };
                    match GROUPS.iter().find(|x| **x == g) {
                        Some(x) => only.push(x),
                        None => bail!("unknown group {g:?}; groups: {}", GROUPS.join(", ")),
                    }
                    // The libp2p figures these groups compare with come along.
                    if ["rtt", "rate", "inproc", "bulk"].contains(&g) {
                        only.push("libp2p");
                    }
                }
                o.only = GROUPS
                    .iter()
                    .copied()
                    .filter(|g| only.contains(g))
                    .collect();
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if o.quick && !runs_given {
        o.runs = 1;
    }
    Ok(Some(o))
}

/// The workspace root (this crate lives in `bench/driver`).
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Where cargo puts release binaries of the workspace at `root`.
fn release_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("release"),
        None => root.join("target/release"),
    }
}

/// Runs `cargo <args>` in `dir` and says whether it succeeded. The variables `cargo run` sets
/// for this binary (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ..) are removed first: build scripts
/// such as ring's declare `rerun-if-env-changed` on them, so inheriting them would rebuild those
/// crates on every bench run and again on the next plain `cargo build`.
fn cargo_build(dir: &Path, args: &[&std::ffi::OsStr]) -> Result<bool> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    let mut child = cmd.spawn().context("run cargo")?;
    // Registered so that an interrupt stops the build too.
    cleanup::register(child.id());
    let status = child.wait().context("wait for cargo")?;
    cleanup::unregister(child.id());
    Ok(status.success())
}

/// Builds the `msgtier` binary and returns its path.
fn msgtier_binary(root: &Path, build: bool) -> Result<PathBuf> {
    if build {
        eprintln!("== cargo build --release --bin msgtier");
        let args = ["build", "--release", "--bin", "msgtier"].map(std::ffi::OsStr::new);
        if !cargo_build(root, &args)? {
            bail!("`cargo build --release --bin msgtier` failed");
        }
    }
    let bin = release_dir(root).join("msgtier");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bin msgtier` in {}",
            bin.display(),
            root.display()
        );
    }
    Ok(bin)
}

/// Builds the libp2p reference if its crate is there; `None` (column "n/a") when unavailable.
fn libp2p_binary(root: &Path, build: bool) -> Option<PathBuf> {
    let dir = root.join("bench/libp2p-ref");
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        eprintln!("== no bench/libp2p-ref: the libp2p column will be n/a");
        return None;
    }
    if build {
        eprintln!("== cargo build --release --manifest-path bench/libp2p-ref/Cargo.toml");
        let mut args = ["build", "--release", "--manifest-path"]
            .map(std::ffi::OsStr::new)
            .to_vec();
        args.push(manifest.as_os_str());
        // Its own target dir whatever CARGO_TARGET_DIR says: the binary is looked up there.
        let target_dir = dir.join("target");
        args.extend([std::ffi::OsStr::new("--target-dir"), target_dir.as_os_str()]);
        if !cargo_build(root, &args).unwrap_or(false) {
            eprintln!("== building libp2p-ref failed: the libp2p column will be n/a");
            return None;
        }
    }
    let bin = dir.join("target/release/libp2p-ref");
    if bin.exists() {
        Some(bin)
    } else {
        eprintln!(
            "== {} is missing (build it with `cargo build --release --manifest-path \
             bench/libp2p-ref/Cargo.toml`): the libp2p column will be n/a",
            bin.display()
        );
        None
    }
}

/// Output of a command, trimmed, or `None`.
fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The lines printed above the table: date, commit, machine.
fn header(root: &Path, o: &Options) -> String {
    let date = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".into());
    let root_s = root.to_string_lossy();
    let commit = output("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB RAM", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "date: {date}\ncommit: {commit}\nmachine: {cores} cores ({cpu}), {mem}, Linux {kernel}\n\
         load average (1/5/15 min, /proc/loadavg) at start: {}\n\
         runs: {}{}; node log level: {}; groups: {}",
        loadavg(),
        o.runs,
        if o.quick { " (--quick)" } else { "" },
        o.node_log,
        o.only.join(", "),
    )
}

/// The msgtier binary's allocator, so the in-process node (group `inproc`) runs as it does.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cleanup::kill_all();
            eprintln!("msgtier-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let Some(o) = parse_args()? else {
        return Ok(());
    };
    let wall = Instant::now();
    let root = workspace_root();
    let tmp = std::env::temp_dir().join(format!("msgtier-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    cleanup::install(&tmp);

    let bin = msgtier_binary(&root, !o.no_build)?;
    let libp2p = if o.only.contains(&"libp2p") {
        libp2p_binary(&root, !o.no_build)
    } else {
        None
    };
    let head = header(&root, &o);
    eprintln!("\n{head}\n");

    // libp2p modes: those the selected groups compare with, or all when none is selected.
    let has = |g: &str| o.only.contains(&g);
    let all = !["rtt", "rate", "inproc", "bulk"].iter().any(|g| has(g));
    let modes = scenario::libp2p::Modes {
        rtt: all || has("rtt"),
        rate: all || has("rate") || has("inproc"),
        bulk: all || has("bulk"),
    };
    let mut res = Results::default();
    if o.quick {
        res.note(
            "--quick: counts are about a tenth of a full run's (and a 10-node mesh); \
             the labels give the full-run sizes",
        );
    }
    let mut failed = false;
    for run in 1..=o.runs {
        res.run = run;
        let ctx = Ctx {
            bin: bin.clone(),
            libp2p: libp2p.clone(),
            dir: tmp.join(format!("run{run}")),
            quick: o.quick,
            node_log: o.node_log.clone(),
        };
        for group in &o.only {
            if cleanup::interrupted() {
                bail!("interrupted");
            }
            let t0 = Instant::now();
            eprint!("[run {run}/{}] {group} ... ", o.runs);
            let r = match *group {
                "ceiling" => scenario::ceiling::run(&ctx, &mut res),
                "rtt" => scenario::latency::run(&ctx, &mut res),
                "rate" => scenario::rate::run(&ctx, &mut res),
                "durable" => scenario::durable::run(&ctx, &mut res),
                "inproc" => scenario::inproc::run(&ctx, &mut res),
                "bulk" => scenario::bulk::run(&ctx, &mut res),
                "lossy" => scenario::lossy::run(&ctx, &mut res),
                "relay" => scenario::relay::run(&ctx, &mut res),
                "libp2p" => scenario::libp2p::run(&ctx, &mut res, modes),
                "recovery" => scenario::recovery::run(&ctx, &mut res),
                "mesh" => scenario::mesh::run(&ctx, &mut res),
                "topics" => scenario::topics::run(&ctx, &mut res),
                _ => Ok(()),
            };
            eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
            if let Err(e) = r {
                failed = true;
                eprintln!("  failed: {e:#}");
                res.note(format!("{group} failed: {e:#}"));
            }
        }
    }

    res.run = 0;
    println!("{head}\n");
    println!("{}", report::table(&res, libp2p.is_none()));
    if !res.notes.is_empty() {
        println!("notes:");
        for n in &res.notes {
            println!("- {n}");
        }
        println!();
    }
    println!(
        "wall time: {:.0} s; load average at end: {}",
        wall.elapsed().as_secs_f64(),
        loadavg()
    );
    cleanup::kill_all();
    if o.keep || failed {
        println!("configs and node logs kept in {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
