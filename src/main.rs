//! The `hotmount` binary: parses the command line and hands over to the
//! library (`serve` runs the agent; the rest are API clients).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hotmount::cli::{Cli, Command, run_client};
use hotmount::config::{Config, LogFormat};
use hotmount::sys::LinuxMounter;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    hotmount::memory::tune_allocator();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hotmount: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let result = runtime.block_on(serve(args));
            // Dropping the runtime would wait for every blocking task, and a
            // mount or probe call stuck in the kernel on an NFS server that
            // does not answer never returns: SIGTERM would hang. Everything
            // that matters has finished inside `run`; exit ends such calls.
            runtime.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("hotmount: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        command => match runtime.block_on(run_client(command)) {
            Ok(output) => {
                if !output.is_empty() {
                    println!("{output}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hotmount: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn serve(args: hotmount::config::ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(args).context("configuration")?;
    let filter = EnvFilter::try_from_env("HOTMOUNT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    hotmount::run(config, Arc::new(LinuxMounter), shutdown).await?;
    Ok(())
}
