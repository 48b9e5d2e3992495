//! `aia`: the operator's command line.
//!
//! It reads the same environment as the services (`DATABASE_URL`, `APP_ENV`, ...),
//! through the same settings code.

// A command-line tool: standard output is its interface.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use aia_settings::{Common, Env};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

/// Operate an AIA security platform deployment.
#[derive(Parser)]
#[command(name = "aia", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if it is missing, then apply pending migrations.
    Migrate {
        /// Only list pending migrations; exit 1 if there are any.
        #[arg(long)]
        check: bool,
    },
    /// Print a new Ed25519 signing key (PKCS#8 PEM) for JWT_SIGNING_KEY_FILE.
    GenSigningKey,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migrate { check } => migrate(check).await,
        Command::GenSigningKey => aia_tokens::SigningKey::generate_pem()
            .map(|pem| {
                print!("{pem}");
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
    };
    result.unwrap_or_else(|error| {
        eprintln!("aia: {error:#}");
        ExitCode::FAILURE
    })
}

async fn migrate(check: bool) -> anyhow::Result<ExitCode> {
    let common = Common::from_env(Env::from_process())?;
    let url = common.database_url.expose_secret();
    if check {
        let pending = aia_db::pending_migrations(url).await?;
        for name in &pending {
            println!("pending: {name}");
        }
        return Ok(if pending.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if aia_db::ensure_database(url).await? {
        println!("created the database");
    }
    let applied = aia_db::migrate(url).await?;
    if applied.is_empty() {
        println!("the database is up to date");
    }
    for name in applied {
        println!("applied: {name}");
    }
    Ok(ExitCode::SUCCESS)
}
