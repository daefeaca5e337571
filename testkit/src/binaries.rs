//! Finding the server executables: `PG_BIN_DIR` / `REDIS_SERVER_BIN` / `REDIS_CLI_BIN` / `NGINX_BIN`, then
//! `PATH`, then the places Debian installs them. A missing binary is a panic that says how to install it, because
//! a test cannot do anything useful without its server.

use std::{
    env,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

const PG_MISSING: &str = "PostgreSQL server binaries not found \
     (set PG_BIN_DIR or install them: sudo apt-get install -y postgresql)";
const REDIS_MISSING: &str = "redis-server not found \
     (set REDIS_SERVER_BIN or install it: sudo apt-get install -y redis-server)";
const REDIS_CLI_MISSING: &str = "redis-cli not found \
     (set REDIS_CLI_BIN or install it: sudo apt-get install -y redis-tools, or bash scripts/install-deps.sh)";
const NGINX_MISSING: &str = "nginx not found \
     (set NGINX_BIN or install it: sudo apt-get install -y nginx, or bash scripts/install-deps.sh)";

/// The directory holding `initdb`, `postgres` and `psql` of one PostgreSQL version.
///
/// The three must come from the same directory: Debian's `/usr/bin/psql` is a wrapper script and
/// the server binaries are not on `PATH` at all.
pub(crate) fn pg_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| find_pg_bin_dir().unwrap_or_else(|| panic!("{PG_MISSING}")))
}

/// The `redis-server` executable.
pub(crate) fn redis_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_redis_server().unwrap_or_else(|| panic!("{REDIS_MISSING}")))
}

/// The `redis-cli` executable (`redis-cli --cluster create` makes nodes a Redis Cluster).
pub(crate) fn redis_cli_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_redis_cli().unwrap_or_else(|| panic!("{REDIS_CLI_MISSING}")))
}

/// The `nginx` executable.
pub(crate) fn nginx_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_nginx().unwrap_or_else(|| panic!("{NGINX_MISSING}")))
}

fn find_pg_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        // An explicit setting that is wrong should fail loudly, not fall back to another version.
        assert!(
            is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres")),
            "PG_BIN_DIR={} does not contain initdb and postgres",
            dir.display()
        );
        return Some(dir);
    }
    if let Some(initdb) = find_on_path("initdb") {
        // `initdb` on PATH is often a symlink (e.g. /usr/local/bin → /usr/lib/postgresql/15/bin);
        // resolve it so `psql` and `postgres` come from the same installation.
        let real = initdb.canonicalize().unwrap_or(initdb);
        if let Some(dir) = real.parent().filter(|dir| is_executable(&dir.join("postgres"))) {
            return Some(dir.to_path_buf());
        }
    }
    highest_debian_version(Path::new("/usr/lib/postgresql"))
}

/// `/usr/lib/postgresql/<version>/bin` for the highest numeric version that has `postgres`.
fn highest_debian_version(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = version_key(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("postgres")).then_some((version, bin))
        })
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, bin)| bin)
}

/// "15" → [15], "9.6" → [9, 6]; compared numerically so 10 sorts above 9.6.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn find_redis_server() -> Option<PathBuf> {
    if let Some(bin) = env::var_os("REDIS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        assert!(is_executable(&bin), "REDIS_SERVER_BIN={} is not an executable file", bin.display());
        return Some(bin);
    }
    find_on_path("redis-server")
}

fn find_redis_cli() -> Option<PathBuf> {
    if let Some(bin) = env::var_os("REDIS_CLI_BIN") {
        let bin = PathBuf::from(bin);
        assert!(is_executable(&bin), "REDIS_CLI_BIN={} is not an executable file", bin.display());
        return Some(bin);
    }
    find_on_path("redis-cli")
}

fn find_nginx() -> Option<PathBuf> {
    if let Some(bin) = env::var_os("NGINX_BIN") {
        let bin = PathBuf::from(bin);
        assert!(is_executable(&bin), "NGINX_BIN={} is not an executable file", bin.display());
        return Some(bin);
    }
    // Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    find_on_path("nginx").or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| is_executable(p)))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("10").unwrap() > version_key("9.6").unwrap());
        assert!(version_key("16").unwrap() > version_key("15").unwrap());
        assert_eq!(version_key("main"), None);
    }

    #[test]
    fn highest_debian_version_skips_dirs_without_postgres() {
        let root = tempfile::tempdir().unwrap();
        for (version, with_postgres) in [("9.6", true), ("15", true), ("17", false)] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            if with_postgres {
                let postgres = bin.join("postgres");
                std::fs::write(&postgres, "").unwrap();
                std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        assert_eq!(highest_debian_version(root.path()), Some(root.path().join("15").join("bin")));
    }
}
