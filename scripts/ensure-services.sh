#!/bin/sh
# Install what the test suite's services need when the machine lacks it.
# (PostgreSQL binaries; the tests start their own server on a temp dir and a loopback
# port, so nothing is started here.)
set -eu

have_postgres() {
    command -v initdb >/dev/null 2>&1 && return 0
    for f in /usr/lib/postgresql/*/bin/initdb /usr/pgsql-*/bin/initdb; do
        [ -x "$f" ] && return 0
    done
    return 1
}

ensure_postgres_account() {
    # initdb refuses to run as root: as root, the tests run the server as "postgres".
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "ensure-services: creating the postgres system account" >&2
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
}

if have_postgres; then
    ensure_postgres_account
    exit 0
fi

echo "ensure-services: PostgreSQL is missing; installing it for the store tests" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "ensure-services: run as root or install PostgreSQL (initdb, pg_ctl, psql)" >&2
    exit 1
fi

if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y postgresql
elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y postgresql-server
elif command -v brew >/dev/null 2>&1; then
    brew install postgresql
else
    echo "ensure-services: no known package manager; install PostgreSQL by hand" >&2
    exit 1
fi

# The Debian package creates a default cluster and may start it; the tests do not use
# it (they run their own server), and this script starts nothing itself.
have_postgres || { echo "ensure-services: PostgreSQL still not found" >&2; exit 1; }
ensure_postgres_account
