//! `ragd key` and `ragd token`: make API keys (printed once, stored by the server only as their
//! sha256) and Ed25519 signing keys, and mint signed tokens. The servers never need the private
//! key: they verify tokens with the JWKS `ragd token keygen` writes beside it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use ragd_core::auth::{Grant, key_digest_hex, random_key};
use ragd_core::jwt::{Claims, SigningKey, generate_signing_key};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new API key: prints the key (shown only now) and its keys-file entry.
    New {
        /// The key's name (what logs and metrics show).
        #[arg(long)]
        name: String,
        /// Grants: embed, generate, metrics, or read|write|manage:<collection or prefix*>.
        #[arg(long = "grant", required = true)]
        grants: Vec<Grant>,
        /// RFC 3339 time after which the key is refused.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Print the sha256 (keys-file form) of the key read from standard input.
    Hash,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an Ed25519 signing key (DIR/signing-key.pem, private) and its JWKS (DIR/jwks.json,
    /// for the servers' --auth-jwks-file).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint a signed token.
    Mint(MintArgs),
}

#[derive(Debug, Args)]
pub struct MintArgs {
    /// The private signing key (PKCS#8 PEM, Ed25519).
    #[arg(long, env = "RAGD_SIGNING_KEY")]
    signing_key: PathBuf,
    /// The principal's name (`sub`).
    #[arg(long)]
    sub: String,
    /// Grants, as for `ragd key new`.
    #[arg(long = "grant", required = true)]
    grants: Vec<Grant>,
    /// Lifetime in seconds (`exp` = now + ttl).
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// Not valid before now + this many seconds (`nbf`).
    #[arg(long)]
    not_before: Option<i64>,
}

fn toml_grant(g: &Grant) -> String {
    match g {
        Grant::Collection { collection, role } => {
            format!("{{ collection = {collection:?}, role = \"{role}\" }}")
        }
        Grant::Service { service } => format!("{{ service = \"{service}\" }}"),
    }
}

pub fn key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::New { name, grants, expires } => {
            if let Some(e) = &expires {
                ragd_core::auth::parse_time(e).map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            }
            let key = random_key().map_err(anyhow::Error::msg)?;
            println!("{key}");
            eprintln!("# the key above is shown only now; add this to the keys file:");
            eprintln!("[[keys]]\nname = {name:?}\nsha256 = \"{}\"", key_digest_hex(&key));
            if let Some(e) = expires {
                eprintln!("expires = {e:?}");
            }
            eprintln!("grants = [{}]", grants.iter().map(toml_grant).collect::<Vec<_>>().join(", "));
            Ok(())
        }
        KeyCommand::Hash => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            println!("{}", key_digest_hex(key.trim()));
            Ok(())
        }
    }
}

pub fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Keygen { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let pem = generate_signing_key().map_err(anyhow::Error::msg)?;
            let key = SigningKey::from_pem(pem.as_bytes()).map_err(anyhow::Error::msg)?;
            ragd_core::pki::write(&out.join("signing-key.pem"), &pem)?;
            ragd_core::pki::write(&out.join("jwks.json"), &key.jwks_json())?;
            eprintln!(
                "wrote {} (private: keep it off the servers) and {} (give it to the servers' --auth-jwks-file)",
                out.join("signing-key.pem").display(),
                out.join("jwks.json").display()
            );
            Ok(())
        }
        TokenCommand::Mint(a) => {
            let key = SigningKey::load(&a.signing_key).map_err(anyhow::Error::msg)?;
            let now = chrono::Utc::now().timestamp();
            let claims = Claims {
                sub: a.sub,
                exp: now + a.ttl,
                nbf: a.not_before.map(|s| now + s),
                iat: Some(now),
                grants: a.grants,
            };
            println!("{}", key.mint(&claims));
            Ok(())
        }
    }
}
