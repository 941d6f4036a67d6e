//! `msgtier <config.json>` (or `msgtier run <config.json>`): load the config, set up logging,
//! run the node until SIGINT/SIGTERM.
//! `msgtier send | status | peers | events`: a client of a running node's HTTP API (`cli.rs`).
//! `msgtier init | check | id`: a starter config, a config's effective values, a node's keys.
//! `msgtier ca init` / `msgtier ca sign ...`: a network CA's key and member certificates.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{info, warn};

/// A self-hosted peer-to-peer messaging node.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The node's config file (JSON; comments and trailing commas allowed).
    #[arg(required = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Runs a node (the same as `msgtier CONFIG`).
    Run {
        /// The node's config file.
        config: PathBuf,
    },
    /// Sends a message (or runs a script) on TARGET; prints a script's stdout and stderr and
    /// exits with its exit code, or prints the receipt. TARGET `*` (every member node, this one
    /// included) or `id1,id2,...` fans out: one block per node, the worst exit code.
    Send {
        /// The target node's id; `*` for every node, or ids separated by commas.
        target: String,
        /// The message, `-` for stdin (none: an empty message).
        body: Option<String>,
        /// Send this file's contents.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Keep trying for this many seconds if the target is away (store and forward).
        #[arg(long)]
        ttl: Option<u64>,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Shows this node: id, keys, listeners, counters and its peers.
    Status {
        /// The raw /status JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Lists the known nodes: state, path, transport, RTT, last heard.
    Peers {
        /// The raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Follows the event stream, one line per event.
    Events {
        /// Only these types (comma-separated: message, script, peer_up, peer_down, route,
        /// punch, delivery).
        #[arg(long)]
        types: Option<String>,
        /// Only events about this node id.
        #[arg(long)]
        from: Option<String>,
        /// The events' JSON, one object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Writes a commented starter config with a fresh secret and free ports.
    Init {
        /// The node's id (default: this machine's host name).
        #[arg(long)]
        id: Option<String>,
        /// Where to write it (never overwrites).
        #[arg(default_value = "node.json")]
        path: PathBuf,
    },
    /// Validates a config and prints its effective values (secrets redacted).
    Check {
        /// The config file.
        config: PathBuf,
    },
    /// Prints the node's public keys, creating its identity if it has none yet.
    Id {
        /// The config file.
        config: PathBuf,
    },
    /// A network CA (optional): its key, and certificates for the members' identity keys.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(clap::Subcommand)]
enum CaAction {
    /// Creates the CA's key file (mode 0600) and prints the public key for `network_ca`.
    Init {
        /// Where to write the CA key (refuses to overwrite one).
        #[arg(long, default_value = "ca.key")]
        ca_key: PathBuf,
    },
    /// Prints a certificate for one member, for its config's `certificate`.
    Sign {
        /// The CA key file `ca init` wrote.
        #[arg(long, default_value = "ca.key")]
        ca_key: PathBuf,
        /// The member's network.
        #[arg(long)]
        network: String,
        /// The member's node id.
        #[arg(long)]
        id: String,
        /// The member's identity key (`public_key` on its /status), 64 hex characters.
        #[arg(long)]
        key: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

/// jemalloc instead of glibc's malloc. A node allocates many small, short-lived objects per
/// message on one thread and frees buffers that HTTP worker threads allocated; glibc spent
/// ~9 % of a receiving node's time in `_int_malloc`/`_int_free` (perf). Side by side with wrk
/// (64 connections, 1 hop, binaries alternated): 30.7k / 34.6k -> 36.2k / 41.6k msg/s, 1 MiB
/// bulk unchanged or better, +1.3 MiB idle RSS (BENCHMARKS.md, 2026-12-06). mimalloc gave the same rate but lost a quarter of the TCP
/// bulk figure. It also replaces glibc's mmap/trim tuning for 1 MiB buffers (jemalloc reuses
/// them without faulting pages in per message).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = |r: Result<ExitCode, String>| match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msgtier: {e}");
            ExitCode::from(cli::EXIT_FAILED)
        }
    };
    let config = match cli.command {
        Some(Command::Ca { action }) => {
            return match ca(action) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Send {
            target,
            body,
            file,
            ttl,
            timeout,
            api,
        }) => {
            let args = cli::SendArgs {
                target,
                body,
                file,
                ttl,
                timeout_ms: timeout,
            };
            return client(cli::send(&api, args));
        }
        Some(Command::Status { json, api }) => return client(cli::status(&api, json)),
        Some(Command::Peers { json, api }) => return client(cli::peers(&api, json)),
        Some(Command::Events {
            types,
            from,
            json,
            api,
        }) => return client(cli::events(&api, types, from, json)),
        Some(Command::Init { id, path }) => return client(cli::init(id, &path)),
        Some(Command::Check { config }) => {
            return match cli::check(&config) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Id { config }) => return client(cli::id(&config)),
        Some(Command::Run { config }) => config,
        None => match cli.config {
            Some(config) => config,
            None => {
                eprintln!("usage: msgtier <config.json> (or msgtier --help)");
                return ExitCode::from(2);
            }
        },
    };
    let loaded = match msgtier::config::load(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut logger = env_logger::Builder::new();
    let level = loaded.config.log.unwrap_or(log::LevelFilter::Info);
    match std::env::var("RUST_LOG") {
        Ok(spec) => {
            logger.parse_filters(&spec);
            logger.init();
        }
        Err(_) => {
            // The logger passes everything; the global maximum is the config's level, which a
            // reload can raise or lower (log::set_max_level).
            logger.filter_level(log::LevelFilter::Trace);
            logger.init();
            log::set_max_level(level);
        }
    }
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let system = actix::System::new();
    let result = system.block_on(async move {
        let node = msgtier::node::start(loaded.config).await?;
        let reloader = node.reloader.clone();
        // SIGHUP (what `systemctl reload` sends) re-reads the config; it never stops the node.
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            actix::spawn(async move {
                while hup.recv().await.is_some() {
                    info!("SIGHUP: reloading the config");
                    // A refusal is logged by the reloader; the node goes on.
                    let _ = reloader.reload().await;
                }
            });
        }
        wait_for_signal().await;
        info!("shutting down");
        node.stop().await;
        Ok::<(), msgtier::node::StartError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr (the log goes there too; once is enough).
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `msgtier ca ...`.
fn ca(action: CaAction) -> Result<(), String> {
    use msgtier::identity::Identity;
    use msgtier::proto::cert::Certificate;
    match action {
        CaAction::Init { ca_key } => {
            let ca = Identity::generate().map_err(|e| e.to_string())?;
            let mut file = {
                let mut o = std::fs::OpenOptions::new();
                o.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    o.mode(0o600);
                }
                o.open(&ca_key)
                    .map_err(|e| format!("cannot create {}: {e}", ca_key.display()))?
            };
            use std::io::Write;
            let text = format!("ed25519:{}\n", hex::encode(*ca.seed()));
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", ca_key.display()))?;
            println!("{}", hex::encode(ca.signing_public()));
            eprintln!(
                "CA key written to {}; put the line above in every member's config as \
                 \"network_ca\", and keep the key file offline",
                ca_key.display()
            );
            Ok(())
        }
        CaAction::Sign {
            ca_key,
            network,
            id,
            key,
            days,
        } => {
            let text = std::fs::read_to_string(&ca_key)
                .map_err(|e| format!("cannot read {}: {e}", ca_key.display()))?;
            let seed = text
                .trim()
                .strip_prefix("ed25519:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!("{}: not a CA key from msgtier ca init", ca_key.display())
                })?;
            let ca = Identity::from_private(seed);
            let public_key = hex::decode(key.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or("--key: expected 64 hex characters (the member's public_key)")?;
            let valid = |s: &str| msgtier::wire::frame::valid_id(s);
            if !valid(&id) {
                return Err(format!("--id: {id:?} is not a valid node id"));
            }
            if !valid(&network) {
                return Err(format!(
                    "--network: {network:?} is not a valid network name"
                ));
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let cert = Certificate::issue(
                &ca,
                &network,
                &id,
                public_key,
                now.saturating_add(days.saturating_mul(86_400)),
            );
            println!("{}", cert.to_text());
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
