//! `studentsync`: the command line.
//!
//! - `import FILE`: sync a SIS export (CSV or JSON lines) through the HTTP API
//!   (see `import/`); it never connects to the database.
//! - `migrate`, `create-school`, `create-key`, `revoke-key`: the operator's
//!   commands, run directly against the database (the same operations as the
//!   admin endpoints, for bootstrapping before an `ADMIN_TOKEN` is set).

mod import;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use studentsync::config::Config;
use studentsync::store::keys;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "studentsync", version, about = "Student Sync command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sync students from a CSV or JSON-lines file through the HTTP API.
    Import(Box<import::ImportArgs>),
    #[command(flatten)]
    Admin(Admin),
}

/// The database commands: only these read `DATABASE_URL` and connect.
#[derive(Subcommand)]
enum Admin {
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Create a school; prints its id and first API key (shown once).
    CreateSchool { name: String },
    /// Add an API key to a school; prints it (shown once).
    CreateKey { school_id: Uuid },
    /// Revoke an API key at once.
    RevokeKey { api_key_id: Uuid },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Import(args) => import::run(*args).await,
        Command::Admin(command) => {
            studentsync::telemetry::init();
            match admin(command).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("Error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn admin(command: Admin) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let pool = studentsync::db::prepare(&config.database_url, 2).await?;
    match command {
        Admin::Migrate => println!("migrations applied"),
        Admin::CreateSchool { name } => {
            let (school_id, key) = keys::create_school(&pool, &name).await?;
            println!(
                "schoolId: {school_id}\napiKeyId: {}\napiKey: {}",
                key.id, key.plaintext
            );
        }
        Admin::CreateKey { school_id } => match keys::create_key(&pool, school_id).await? {
            Some(key) => println!("apiKeyId: {}\napiKey: {}", key.id, key.plaintext),
            None => anyhow::bail!("no school {school_id}"),
        },
        Admin::RevokeKey { api_key_id } => {
            if !keys::revoke_key(&pool, api_key_id).await? {
                anyhow::bail!("no live API key {api_key_id}");
            }
            println!("revoked");
        }
    }
    Ok(())
}
