#!/usr/bin/env bash
# Ensure the tools that building, running and testing the workspace need are present:
# PostgreSQL server binaries, redis-server and redis-cli, promtool, nginx, tmux, a C linker and cargo; with --browser also
# chromium and chromedriver (for the dashboard's headless-browser tests); with --schemathesis
# (and always when CI=true) schemathesis, in a venv (the orders API's schema test).
#
#   bash scripts/install-deps.sh [--browser] [--schemathesis]
#
# Idempotent: installs only what is missing, with apt-get when run as root (one `apt-get update`
# first, and only when something is missing); otherwise prints the exact command and exits 1.
# It never installs Rust itself: it says how to, since rustup is per user.
#
# Other scripts source this file for its helpers (`ensure_deps`, `pg_bin_dir`); sourcing runs
# nothing by itself.

# Print the directory holding PostgreSQL's server binaries (initdb, postgres, pg_ctl), or fail.
# Order: $PG_BIN_DIR, initdb on PATH, then the newest /usr/lib/postgresql/<major>/bin (Debian
# keeps server binaries off PATH).
pg_bin_dir() {
    local dir
    if [[ -n "${PG_BIN_DIR:-}" && -x "${PG_BIN_DIR}/initdb" ]]; then
        printf '%s\n' "$PG_BIN_DIR"
        return 0
    fi
    if dir=$(command -v initdb 2>/dev/null); then
        # Resolve symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) so
        # the directory also holds `postgres` and `pg_ctl`.
        dir=$(dirname "$(readlink -f "$dir")")
        if [[ -x "$dir/postgres" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    dir=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
        sort -V | tail -n 1)
    [[ -n "$dir" ]] || return 1
    dirname "$dir"
}

# Install the named Debian packages (as root) or print the command that would (otherwise).
apt_install() {
    (($# > 0)) || return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: missing: $*; no apt-get here, install the equivalents with your package manager" >&2
        return 1
    fi
    if ((EUID != 0)); then
        echo "install-deps: missing packages: $*. Install them with:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y $*" >&2
        return 1
    fi
    echo "install-deps: installing $* with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@"
}

# Check cargo (and the Rust version the workspace declares); never installs Rust.
check_rust() {
    local cargo_bin version min="1.88"
    if ! cargo_bin=$(command -v cargo 2>/dev/null); then
        if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
            echo "install-deps: cargo is in ~/.cargo/bin but not on PATH: run 'source ~/.cargo/env'" >&2
        else
            echo "install-deps: cargo not found. Install Rust with rustup:" >&2
            echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && source ~/.cargo/env" >&2
        fi
        return 1
    fi
    version=$("$(dirname "$cargo_bin")/rustc" --version 2>/dev/null | awk '{print $2}') || version=""
    if [[ -n "$version" && "$(printf '%s\n%s\n' "$min" "$version" | sort -V | head -n 1)" != "$min" ]]; then
        echo "install-deps: rustc $version is older than the workspace's rust-version $min: run 'rustup update stable'" >&2
        return 1
    fi
}

# schemathesis (PyPI), pinned: tests/schemathesis.rs in orders-api expects this version.
SCHEMATHESIS_VERSION=4.32.5

# Print the path of a schemathesis executable, installing it first when missing: into a venv at
# ${XDG_CACHE_HOME:-~/.cache}/orders-realtime/schemathesis-<version>, with pip (python3 and its
# venv module from apt when missing). Idempotent; the venv is left alone once it works.
ensure_schemathesis() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/orders-realtime/schemathesis-$SCHEMATHESIS_VERSION"
    if [[ -x "$venv/bin/schemathesis" ]] && "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
        printf '%s\n' "$venv/bin/schemathesis"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv >&2 || return 1
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >&2; then
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        rm -rf "$venv"
        apt_install python3-venv >&2 && python3 -m venv "$venv" >&2 || {
            echo "install-deps: cannot create a Python venv at $venv (install python3-venv)" >&2
            return 1
        }
    fi
    echo "install-deps: installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2; then
        rm -rf "$venv"
        echo "install-deps: pip could not install schemathesis==$SCHEMATHESIS_VERSION (network? a PyPI mirror via PIP_INDEX_URL)" >&2
        return 1
    fi
    printf '%s\n' "$venv/bin/schemathesis"
}

# Make sure everything is present; install what is missing. Pass --browser for chromium too,
# --schemathesis for schemathesis (CI=true implies it: the test fails there without it).
ensure_deps() {
    local browser=0 schemathesis=0 arg missing=()
    # 1: asked for (failure stops here); 2: implied by CI (failure is left to the test, which
    # then fails alone, saying schemathesis is missing, rather than stopping every test).
    [[ "${CI:-}" == true ]] && schemathesis=2
    for arg in "$@"; do
        case "$arg" in
            --browser) browser=1 ;;
            --schemathesis) schemathesis=1 ;;
            -h | --help)
                echo "usage: bash scripts/install-deps.sh [--browser] [--schemathesis]"
                return 0
                ;;
            *)
                echo "install-deps: unknown argument: $arg (try --help)" >&2
                return 2
                ;;
        esac
    done

    pg_bin_dir >/dev/null || missing+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || [[ -x "${REDIS_SERVER_BIN:-}" ]] || missing+=(redis-server)
    # redis-cli (testkit's RedisCluster joins its nodes with `redis-cli --cluster create`).
    # Debian's redis-server depends on redis-tools, but a redis-server from elsewhere may not.
    command -v redis-cli >/dev/null 2>&1 || [[ -x "${REDIS_CLI_BIN:-}" ]] || missing+=(redis-tools)
    # The e2e tests pipe each service's /metrics through `promtool check metrics`. Debian ships
    # promtool only in `prometheus`, which also brings the Prometheus server: enabled as a
    # service on a systemd host (Docker images' policy-rc.d keeps it from starting).
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    # rustc links through the system C compiler.
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    # nginx: the e2e test of deploy/nginx-debian.conf runs a private one in front of two
    # replicas. Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx || -x "${NGINX_BIN:-}" ]] || missing+=(nginx)
    # tmux: cli-client's table view is tested in a real terminal (send-keys, capture-pane).
    command -v tmux >/dev/null 2>&1 || missing+=(tmux)
    if ((browser)); then
        command -v chromium >/dev/null 2>&1 || missing+=(chromium)
        command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    fi
    apt_install "${missing[@]}" || return 1

    if ! pg_bin_dir >/dev/null; then
        echo "install-deps: PostgreSQL server binaries still not found (set PG_BIN_DIR to the directory holding initdb)" >&2
        return 1
    fi
    if ((schemathesis)) && ! ensure_schemathesis >/dev/null; then
        ((schemathesis == 1)) && return 1
        echo "install-deps: warning: schemathesis could not be installed; orders-api's schemathesis test will fail" >&2
    fi
    check_rust
}

# Cargo subcommands CI uses, built from crates.io with `cargo install --locked` when missing:
# `ensure_cargo_tool cargo-deny` (run below for .ci/run's licence and bans check) and
# `ensure_cargo_tool cargo-fuzz` (called by scripts/fuzz.sh, which needs nightly anyway).
ensure_cargo_tool() {
    local crate=$1
    if command -v "$crate" >/dev/null 2>&1 || [[ -x "$HOME/.cargo/bin/$crate" ]]; then
        return 0
    fi
    echo "install-deps: installing $crate with cargo install (once; takes a few minutes)" >&2
    if ! cargo install "$crate" --locked; then
        echo "install-deps: could not install $crate; install it by hand with: cargo install $crate --locked" >&2
        return 1
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    ensure_deps "$@"
    ensure_cargo_tool cargo-deny
    echo "install-deps: ok (postgres: $(pg_bin_dir), redis-server: $(command -v redis-server || echo "${REDIS_SERVER_BIN:-}"))"
fi
