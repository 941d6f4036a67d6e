//! `msgtier <config.json>`: load the config, set up logging, run the node until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{info, warn};

/// A self-hosted peer-to-peer messaging node.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The node's config file (JSON; comments and trailing commas allowed).
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match msgtier::config::load(&cli.config) {
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
