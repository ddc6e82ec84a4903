//! The `hotmount` binary: parses the command line and hands over to the
//! library (`serve` runs the supervisor, which runs this binary again as its
//! worker; the rest are API clients).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hotmount::cli::{Cli, Command, run_client};
use hotmount::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    hotmount::memory::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            // SIGHUP asks the supervisor to upgrade; until its handler is in
            // place (and in a worker, always) it must not end the process.
            // SAFETY: setting a signal disposition to SIG_IGN, before any
            // thread runs.
            let _ = unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGHUP,
                    nix::sys::signal::SigHandler::SigIgn,
                )
            };
            let config = match Config::from_args(args).context("configuration") {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("hotmount: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(config.log_format);
            // The supervisor is one thread; the worker does the work.
            let worker = hotmount::worker::channel_from_env();
            let mut runtime = if worker.is_some() {
                tokio::runtime::Builder::new_multi_thread()
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let runtime = match runtime.enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("hotmount: start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let is_worker = worker.is_some();
            let result = match worker {
                Some(channel) => runtime
                    .block_on(hotmount::worker::run_worker(config, channel))
                    .map_err(anyhow::Error::from),
                None => runtime
                    .block_on(hotmount::supervisor::supervise(config))
                    .map_err(anyhow::Error::from),
            };
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
                    if is_worker {
                        // Starting again would fail the same way: the
                        // supervisor stops too.
                        ExitCode::from(hotmount::supervisor::WORKER_FATAL_EXIT)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
        command => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("hotmount: start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_client(command)) {
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
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("HOTMOUNT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
