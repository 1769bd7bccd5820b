# PostgreSQL for cluster/head_services.sh (sourced by it: its options and sizing are this
# file's globals): pg-start, pg-stop, and the check mlflow-start makes before it uses the store.
# shellcheck shell=bash

# Debian's binaries (/usr/lib/postgresql/<version>/bin, the newest), or $PG_BIN.
pg_bin() {
    local dir=${PG_BIN:-}
    if [ -z "$dir" ]; then
        dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
        [ -z "$dir" ] && command -v initdb > /dev/null 2>&1 && dir=$(dirname "$(command -v initdb)")
    fi
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ] || [ ! -x "$dir/pg_ctl" ]; then
        echo "head_services.sh: PostgreSQL's initdb and pg_ctl not found (install Debian's postgresql package: apt-get install -y postgresql; or set PG_BIN)" >&2
        exit 1
    fi
    echo "$dir"
}

# PostgreSQL refuses to run as root: as root, run its programs as the `postgres` system user.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# The data folder: DIR/postgres, unless the server's user cannot reach DIR (pytest's folders
# are mode 0700, root's) or the path is too long for its socket (107 bytes); then
# <the postgres user's home>/uslearn/<hash of DIR> as root (/var/lib/postgresql: kept, never
# cleaned like /var/tmp), /var/tmp/uslearn-postgres/<hash> otherwise. DIR/postgres.datadir
# records which.
pg_datadir() {
    if [ -f "$state/postgres.datadir" ]; then
        cat "$state/postgres.datadir"
        return
    fi
    local dir=$state/postgres hash
    hash=$(printf '%s' "$state" | sha256sum | cut -c1-12)
    if [ "$(id -u)" -eq 0 ]; then
        if ! runuser -u postgres -- test -x "$state" 2>/dev/null || [ ${#dir} -gt 80 ]; then
            dir=$(getent passwd postgres | cut -d: -f6)/uslearn/$hash
        fi
    elif [ ${#dir} -gt 80 ]; then
        dir=/var/tmp/uslearn-postgres/$hash
    fi
    echo "$dir"
}

# Exit 0 when the pid on the first line of lock file $1 is a live postgres (a zombie left by
# a killed server whose parent does not reap it counts as gone; pg_ctl status would not).
pg_alive() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(head -n 1 "$1" | tr -dc '0-9')
    [ -n "$pid" ] && grep -qs postgres "/proc/$pid/comm" && ! grep -qs '^State:.Z' "/proc/$pid/status"
}

pg_running() { pg_alive "$pgdata/postmaster.pid"; }

pg_setup() {
    if [ "$(id -u)" -eq 0 ] && ! id postgres > /dev/null 2>&1; then
        echo "head_services.sh: no 'postgres' system user (Debian's postgresql package creates it)" >&2
        exit 1
    fi
    bin=$(pg_bin)
    pgdata=$(pg_datadir)
}

pg_start() {
    [ -n "$state" ] || { echo "pg-start needs --state" >&2; exit 2; }
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    # A restart without --port keeps the port of the last start (the URI MLflow was given).
    [ -z "$port" ] && [ -f "$state/postgres.uri" ] &&
        port=$(sed -n 's#.*@127\.0\.0\.1:\([0-9]*\)/.*#\1#p' "$state/postgres.uri")
    port=${port:-${PG_PORT:-5432}}
    pg_setup
    sizing
    if pg_running; then
        echo "PostgreSQL already running (data $pgdata; $(cat "$state/postgres.uri" 2>/dev/null | sed 's#//[^@]*@#//#'))"
        return 0
    fi
    if [ -f "$state/postgres.datadir" ] && [ ! -s "$pgdata/PG_VERSION" ]; then
        echo "head_services.sh: the PostgreSQL data of $state ($pgdata) is gone; pg-stop --state $state --purge starts an empty store" >&2
        exit 1
    fi
    if [ ! -s "$pgdata/PG_VERSION" ]; then
        if [ -d "$pgdata" ] && [ -n "$(ls -A "$pgdata")" ]; then
            echo "head_services.sh: $pgdata is not empty and holds no PostgreSQL data; move it away" >&2
            exit 1
        fi
        # The shared fallback parent must stay reachable for every user (as /tmp is).
        case $pgdata in
            /var/tmp/uslearn-postgres/*)
                [ -d /var/tmp/uslearn-postgres ] || { mkdir -p /var/tmp/uslearn-postgres && chmod 1777 /var/tmp/uslearn-postgres; } ;;
        esac
        mkdir -p "$pgdata"
        chmod 700 "$pgdata"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$pgdata"
        # trust on the Unix socket only: it lives in the data folder (mode 0700, the server's
        # user); TCP needs the password.
        if ! as_pg "$bin/initdb" -D "$pgdata" -U postgres -E UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 > "$state/postgres.init.log" 2>&1; then
            echo "head_services.sh: initdb failed; the end of $state/postgres.init.log:" >&2
            tail -n 20 "$state/postgres.init.log" >&2
            exit 1
        fi
        echo "include_if_exists = 'uslearn.conf'" | as_pg tee -a "$pgdata/postgresql.conf" > /dev/null
    fi
    echo "$pgdata" > "$state/postgres.datadir"
    # A postmaster.pid or socket lock left by a killed server whose pid is gone (or reused by
    # another program) stops PostgreSQL from starting: remove them.
    local lock
    for lock in "$pgdata/postmaster.pid" "$pgdata"/.s.PGSQL.*.lock; do
        if [ -f "$lock" ] && ! pg_alive "$lock"; then
            rm -f "$lock"
            echo "removed the stale $lock"
        fi
    done
    # Settings of this start (port, max_connections) beside the data, not on pg_ctl's command
    # line, so that no path needs shell quoting.
    printf '%s\n' "listen_addresses = '127.0.0.1'" "port = $port" \
        "unix_socket_directories = '$pgdata'" "max_connections = $size_max_connections" |
        as_pg tee "$pgdata/uslearn.conf" > /dev/null
    if ! as_pg "$bin/pg_ctl" start -D "$pgdata" -l "$pgdata/server.log" -w -t "$start_timeout" \
        > /dev/null; then
        echo "head_services.sh: PostgreSQL did not start on 127.0.0.1:$port; the end of $pgdata/server.log:" >&2
        tail -n 20 "$pgdata/server.log" >&2
        exit 1
    fi
    # MLflow's role and database (idempotent); a new password each start, kept 0600 in DIR.
    local password sql
    password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    sql() { as_pg "$bin/psql" -h "$pgdata" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAc "$1"; }
    if [ "$(sql "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'")" != 1 ]; then
        sql "CREATE ROLE mlflow LOGIN" > /dev/null
    fi
    sql "ALTER ROLE mlflow PASSWORD '$password'" > /dev/null
    if [ "$(sql "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" != 1 ]; then
        sql "CREATE DATABASE mlflow OWNER mlflow" > /dev/null
    fi
    (umask 077 && echo "postgresql+psycopg://mlflow:$password@127.0.0.1:$port/mlflow" > "$state/postgres.uri")
    echo "PostgreSQL at 127.0.0.1:$port (data $pgdata, max_connections $size_max_connections, database mlflow; URI in $state/postgres.uri)"
}

pg_stop() {
    [ -n "$state" ] || { echo "pg-stop needs --state" >&2; exit 2; }
    if [ ! -f "$state/postgres.datadir" ]; then
        echo "PostgreSQL: not running (no $state/postgres.datadir)"
        return 0
    fi
    pg_setup
    if pg_running; then
        # fast: roll back open transactions and stop; immediate if that hangs.
        if as_pg "$bin/pg_ctl" stop -D "$pgdata" -m fast -w -t 60 > /dev/null ||
            as_pg "$bin/pg_ctl" stop -D "$pgdata" -m immediate -w -t 30 > /dev/null; then
            echo "PostgreSQL stopped (data $pgdata)"
        else
            echo "head_services.sh: PostgreSQL (data $pgdata) did not stop; see $pgdata/server.log" >&2
            exit 1
        fi
    else
        echo "PostgreSQL: not running (data $pgdata)"
    fi
    if $purge; then
        rm -rf "$pgdata"
        rm -f "$state/postgres.datadir" "$state/postgres.uri" "$state/postgres.init.log"
        echo "PostgreSQL data deleted ($pgdata)"
    fi
}

# Exit 1 with one line unless the PostgreSQL of URI $1 answers and allows $2 connections.
pg_check() {
    "$python" - "$1" "$2" <<'EOF'
import sys
try:
    import psycopg
except ImportError:
    sys.exit("head_services.sh: the MLflow server's Python lacks psycopg (pip install 'psycopg[binary]')")
uri, needed = sys.argv[1].replace("postgresql+psycopg://", "postgresql://"), int(sys.argv[2])
where = uri.rsplit("@", 1)[-1]
try:
    with psycopg.connect(uri, connect_timeout=10) as conn:
        allowed = int(conn.execute("SHOW max_connections").fetchone()[0])
except psycopg.Error as err:
    reason = " ".join(str(err).split())
    sys.exit(f"head_services.sh: PostgreSQL at {where} does not answer ({reason}); start it with pg-start")
if allowed < needed:
    sys.exit(f"head_services.sh: PostgreSQL at {where} allows {allowed} connections, the server would open up to {needed}; restart it with pg-stop / pg-start and the same --max-trials")
EOF
}
