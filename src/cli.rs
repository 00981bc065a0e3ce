//! The command line: `serve` (the default), `migrate`, `openapi`, `keys`.

use std::path::Path;

use anyhow::Context;
use chrono::Utc;

use crate::{
    app,
    config::{Cli, Command, KeysCommand, Settings},
    database, keys, spec,
};

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&settings).await,
        Command::Migrate => {
            database::open(&settings.database_url()?, 1).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Openapi { dir } => write_openapi(&dir),
        Command::Keys(command) => manage_keys(&settings, command).await,
    }
}

async fn serve(settings: &Settings) -> anyhow::Result<()> {
    let server = app::start(settings, shutdown_signal()).await?;
    tracing::info!("listening on http://{}  (Swagger UI at /docs)", server.local_addr);
    server.wait().await
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Writes `openapi.json` and `openapi.yaml` into `dir`.
pub fn write_openapi(dir: &Path) -> anyhow::Result<()> {
    let document = spec::document();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in [("openapi.json", spec::to_json(&document)), ("openapi.yaml", spec::to_yaml(&document))] {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn manage_keys(settings: &Settings, command: KeysCommand) -> anyhow::Result<()> {
    let db = database::open(&settings.database_url()?, 1).await?;
    match command {
        KeysCommand::Create { name, scopes, expires_in } => {
            let expires_at = expires_in
                .map(|after| {
                    chrono::Duration::from_std(after).ok().and_then(|after| Utc::now().checked_add_signed(after))
                })
                .map(|at| at.context("--expires-in is too long"))
                .transpose()?;
            let secret = keys::create(&db, &name, &scopes, expires_at).await?;
            eprintln!("Created key {name:?}. It is shown only now; store it safely:");
            println!("{}", secret.expose());
        }
        KeysCommand::List => {
            let when = |at: Option<chrono::DateTime<Utc>>| {
                at.map_or("-".to_owned(), |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            };
            println!("{:<24} {:<24} {:<21} {:<21} {:<21} REVOKED", "NAME", "SCOPES", "CREATED", "LAST USED", "EXPIRES");
            for key in keys::list(&db).await? {
                let scopes: Vec<_> = key.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "{:<24} {:<24} {:<21} {:<21} {:<21} {}",
                    key.name,
                    scopes.join(","),
                    when(Some(key.created_at)),
                    when(key.last_used_at),
                    when(key.expires_at),
                    when(key.revoked_at)
                );
            }
        }
        KeysCommand::Revoke { name } => {
            anyhow::ensure!(keys::revoke(&db, &name).await?, "no key named {name:?}");
            println!("revoked {name:?}");
        }
    }
    Ok(())
}
