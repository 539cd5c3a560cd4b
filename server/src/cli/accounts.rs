//! `kefu users add` and `kefu tokens add | list | revoke`.

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
        #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
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
        #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// List the API tokens: id, user, label, created (never the tokens themselves).
    List {
        #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Revoke an API token at once: by its id (from `kefu tokens list`), by the token itself,
    /// or every token of `--user` (with `--label`, only those).
    Revoke {
        /// A token id, or the token (`kefu_pat_…`).
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        token: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, requires = "user")]
        label: Option<String>,
        #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

pub(super) fn tokens(home: &Path, command: TokensCommand) -> Result<()> {
    match command {
        TokensCommand::Add {
            user,
            label,
            database_url,
        } => tokens_add(home, &user, &label, database_url.as_deref()),
        TokensCommand::List { database_url } => runtime()?.block_on(async {
            let database = connect(home, database_url.as_deref()).await?;
            let tokens = database.api_tokens().await?;
            database.close().await;
            if tokens.is_empty() {
                println!("no API tokens");
            }
            for token in tokens {
                println!(
                    "{}  {}  {}  created {}",
                    token.id,
                    token.user,
                    token.label,
                    crate::time::utc_time(token.created_ms)
                );
            }
            anyhow::Ok(())
        }),
        TokensCommand::Revoke {
            token,
            user,
            label,
            database_url,
        } => runtime()?.block_on(async {
            let database = connect(home, database_url.as_deref()).await?;
            let revoked = match (token, user) {
                (Some(token), _) => {
                    let id = if token.starts_with(crate::auth::API_TOKEN_PREFIX) {
                        crate::auth::sha256_hex(token.trim())
                    } else {
                        token
                    };
                    database.revoke_api_token(&id).await?
                }
                (None, Some(user)) => {
                    let Some(found) = database.user_by_name(&user).await? else {
                        bail!("there is no user `{user}`");
                    };
                    database
                        .revoke_user_tokens(found.id, label.as_deref())
                        .await?
                }
                (None, None) => bail!("name a token, or a user with --user"),
            };
            database.close().await;
            if revoked == 0 {
                bail!("no such API token (see `kefu tokens list`)");
            }
            println!("revoked {revoked} API token(s)");
            anyhow::Ok(())
        }),
    }
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

fn tokens_add(home: &Path, user: &str, label: &str, database_url: Option<&str>) -> Result<()> {
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
