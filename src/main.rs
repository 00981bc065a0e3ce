//! The `users-api` binary: a thin shim over the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = users_api::Cli::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.settings.worker_threads()).enable_all().build();
    let outcome = match runtime {
        Ok(runtime) => runtime.block_on(users_api::cli::run(cli)),
        Err(err) => Err(err.into()),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
