//! Why a PostgreSQL connection failed, in the terms of its fix: refused, unknown host, role
//! missing, database missing, password refused, or not allowed by pg_hba.conf, told apart by
//! the SQLSTATE the server sent or the socket error; a TLS failure by what to set (the CA, the
//! host name, the sslmode).

use std::io::ErrorKind;

use super::Outcome;

/// The failed check for a connection to `url` (redacted) that ended in `err`.
pub(super) fn diagnose(url: &str, err: &sqlx::Error) -> Outcome {
    let env = "DATABASE_URL / --database-url";
    match err {
        sqlx::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => Outcome::failed(
            format!("{url}: connection refused (nothing listens there)"),
            format!("start PostgreSQL, or point {env} at the host and port it listens on"),
        ),
        sqlx::Error::Io(io) if io.kind() == ErrorKind::TimedOut => Outcome::failed(
            format!("{url}: connection timed out"),
            format!("is the host in {env} right, and does a firewall let port 5432 through?"),
        ),
        sqlx::Error::Io(io) if io.to_string().contains("failed to lookup address") => {
            Outcome::failed(format!("{url}: unknown host ({io})"), format!("fix the host name in {env}"))
        }
        sqlx::Error::Database(db) => {
            let message = db.message();
            match db.code().as_deref() {
                Some("3D000") => Outcome::failed(
                    format!("{url}: database missing ({message})"),
                    format!("create it (createdb <name>), or name an existing database in {env}"),
                ),
                Some("28P01") => Outcome::failed(
                    format!("{url}: password authentication failed ({message})"),
                    format!("put the role's password in {env} (postgres://user:password@host/db)"),
                ),
                Some("28000") if message.contains("does not exist") => Outcome::failed(
                    format!("{url}: role missing ({message})"),
                    format!("create the role (createuser <name>), or name an existing one in {env}"),
                ),
                Some("28000") => Outcome::failed(
                    format!("{url}: not allowed to connect ({message})"),
                    "add a line for this role, database and host to pg_hba.conf and reload PostgreSQL",
                ),
                Some("53300") => Outcome::failed(
                    format!("{url}: too many connections ({message})"),
                    "raise max_connections, or close idle clients",
                ),
                code => Outcome::failed(
                    format!("{url}: {message} (SQLSTATE {})", code.unwrap_or_default()),
                    "see PostgreSQL's log",
                ),
            }
        }
        other => {
            let chain = protocol::retry::error_chain(other).to_string();
            match protocol::retry::tls_fix("postgres", &chain) {
                Some(fix) => Outcome::failed(format!("{url}: {chain}"), fix),
                None => Outcome::failed(format!("{url}: {other}"), format!("start PostgreSQL, or point {env} at it")),
            }
        }
    }
}
