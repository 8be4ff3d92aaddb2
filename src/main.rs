//! `studentsync`: the operator's command line — apply migrations and manage
//! schools and API keys directly against the database (the same operations as the
//! admin endpoints, for bootstrapping before an `ADMIN_TOKEN` is set).

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
async fn main() -> anyhow::Result<()> {
    studentsync::telemetry::init();
    let cli = Cli::parse();
    let config = Config::from_env()?;
    let pool = studentsync::db::prepare(&config.database_url, 2).await?;
    match cli.command {
        Command::Migrate => println!("migrations applied"),
        Command::CreateSchool { name } => {
            let (school_id, key) = keys::create_school(&pool, &name).await?;
            println!(
                "schoolId: {school_id}\napiKeyId: {}\napiKey: {}",
                key.id, key.plaintext
            );
        }
        Command::CreateKey { school_id } => match keys::create_key(&pool, school_id).await? {
            Some(key) => println!("apiKeyId: {}\napiKey: {}", key.id, key.plaintext),
            None => anyhow::bail!("no school {school_id}"),
        },
        Command::RevokeKey { api_key_id } => {
            if !keys::revoke_key(&pool, api_key_id).await? {
                anyhow::bail!("no live API key {api_key_id}");
            }
            println!("revoked");
        }
    }
    Ok(())
}
