//! `kefu users add` and `kefu tokens add`.

use std::path::Path;

use anyhow::{Result, bail};
use clap::Subcommand;

use super::common::*;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user, or change an existing user's role and password. The password is read from
    /// `KEFU_PASSWORD`, else from the first line of standard input.
    Add {
        #[arg(long, value_parser = ["admin", "agent"])]
        role: String,
        name: String,
        #[arg(long, env = "KEFU_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token for a user and print it (it is shown only once).
    Add {
        /// The user the token acts as.
        user: String,
        #[arg(long, default_value = "automation")]
        label: String,
        #[arg(long, env = "KEFU_DATABASE_URL")]
        database_url: Option<String>,
    },
}

pub(super) fn users_add(
    home: &Path,
    role: &str,
    name: &str,
    database_url: Option<&str>,
) -> Result<()> {
    crate::auth::check_role(role).map_err(anyhow::Error::msg)?;
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        bail!("a user name has 1 to 100 characters");
    }
    let password = match std::env::var("KEFU_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            eprintln!("password for {name} (one line on standard input):");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if password.chars().count() < 8 {
        bail!("the password must have at least 8 characters");
    }
    let hash = crate::auth::hash_password(&password)?;
    runtime()?.block_on(async {
        let database = connect(home, database_url).await?;
        let user = database.upsert_user(name, role, &hash).await?;
        database.close().await;
        println!("user `{}` is an {}", user.name, user.role);
        anyhow::Ok(())
    })
}

pub(super) fn tokens_add(
    home: &Path,
    user: &str,
    label: &str,
    database_url: Option<&str>,
) -> Result<()> {
    runtime()?.block_on(async {
        let database = connect(home, database_url).await?;
        let Some(found) = database.user_by_name(user).await? else {
            bail!("there is no user `{user}`: add one with `kefu users add --role agent {user}`");
        };
        let token = format!(
            "{}{}",
            crate::auth::API_TOKEN_PREFIX,
            crate::auth::random_hex(24)
        );
        database
            .create_api_token(&crate::auth::sha256_hex(&token), found.id, label)
            .await?;
        database.close().await;
        println!("{token}");
        anyhow::Ok(())
    })
}
