//! `msgtier <config.json>`: load the config, set up logging, run the node until SIGINT/SIGTERM.
//! `msgtier ca init` / `msgtier ca sign ...`: a network CA's key and member certificates.

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ca { action }) = cli.command {
        return match ca(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let Some(config) = cli.config else {
        eprintln!("usage: msgtier <config.json> (or msgtier ca --help)");
        return ExitCode::from(2);
    };
    let loaded = match msgtier::config::load(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut logger = env_logger::Builder::new();
    logger.filter_level(loaded.config.log.unwrap_or(log::LevelFilter::Info));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        logger.parse_filters(&spec);
    }
    logger.init();
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let system = actix::System::new();
    let result = system.block_on(async move {
        let node = msgtier::node::start(loaded.config).await?;
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
