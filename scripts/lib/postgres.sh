# shellcheck shell=bash
# PostgreSQL for the test suite. Sourced by scripts/test (and usable alone:
#   bash -c 'set -euo pipefail; . scripts/lib/postgres.sh; s360_pg_ensure; psql "$TEST_POSTGRES_URL" -c "select 1"'
# ).
#
# s360_pg_ensure finds or starts a server and exports TEST_POSTGRES_URL:
#   1. $TEST_POSTGRES_URL if set (must answer, else fail);
#   2. the machine's cluster on 127.0.0.1:5432 (user postgres, trust auth);
#   3. the machine's cluster after `pg_ctlcluster ... start`;
#   4. a throwaway cluster (initdb under /tmp, port 55432+) stopped and deleted on exit.
# If none works it fails (exit non-zero): PostgreSQL is never silently skipped.
#
# s360_pg_drop_leftovers drops per-test databases (s360t_*) left by earlier runs.

S360_PG_DEFAULT_URL="postgres://postgres@127.0.0.1:5432/postgres"
S360_PG_TMP_DIR=""
S360_PG_TMP_BIN=""

s360_log() { printf '%s\n' "$*" >&2; }
s360_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# s360_pg_ok URL: the server answers a query.
s360_pg_ok() {
    PGCONNECT_TIMEOUT=5 psql "$1" -X -Atqc 'select 1' >/dev/null 2>&1
}

# Directory holding initdb/pg_ctl (newest version), or nothing.
s360_pg_bindir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
        printf '%s\n' "$d"
    elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
    fi
}

# Install the server packages if they are missing entirely and we can.
s360_pg_install_if_missing() {
    if [[ -n "$(s360_pg_bindir)" ]] && command -v psql >/dev/null 2>&1; then
        return 0
    fi
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        s360_log "PostgreSQL server packages missing: apt-get install postgresql"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -qq && apt-get install -y -qq postgresql </dev/null; } >&2; then
            s360_log "apt-get install postgresql failed"
        fi
    fi
}

# Run a command as the postgres OS user when we are root (PostgreSQL refuses to run as root).
s360_pg_as_owner() {
    if [[ $EUID -eq 0 ]]; then
        (cd /tmp && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

s360_pg_machine_cluster_ok() {
    pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && s360_pg_ok "$S360_PG_DEFAULT_URL"
}

s360_pg_start_machine_cluster() {
    command -v pg_ctlcluster >/dev/null 2>&1 || return 1
    local ver
    ver=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | head -n 1)
    [[ -n "$ver" ]] || return 1
    s360_log "starting the machine's PostgreSQL cluster ($ver/main)"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 2>&1 || true
    local _
    for _ in $(seq 1 20); do
        s360_pg_machine_cluster_ok && return 0
        sleep 0.5
    done
    return 1
}

s360_pg_stop_throwaway() {
    if [[ -n "$S360_PG_TMP_DIR" && -d "$S360_PG_TMP_DIR" ]]; then
        s360_pg_as_owner "$S360_PG_TMP_BIN/pg_ctl" -D "$S360_PG_TMP_DIR/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        rm -rf "$S360_PG_TMP_DIR"
        S360_PG_TMP_DIR=""
    fi
}

s360_pg_start_throwaway() {
    local bin port dir
    bin=$(s360_pg_bindir)
    [[ -n "$bin" ]] || { s360_log "no initdb/pg_ctl found under /usr/lib/postgresql/*/bin"; return 1; }
    if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        s360_log "running as root but there is no 'postgres' OS user to own a throwaway cluster"
        return 1
    fi
    port=""
    local p
    for p in $(seq 55432 55442); do
        if ! pg_isready -q -h 127.0.0.1 -p "$p" >/dev/null 2>&1 && ! [[ -e "/tmp/.s.PGSQL.$p" ]]; then
            port=$p
            break
        fi
    done
    [[ -n "$port" ]] || { s360_log "ports 55432-55442 all busy"; return 1; }

    dir=$(mktemp -d "/tmp/secur360-pgtest-$EUID.XXXXXX")
    S360_PG_TMP_DIR=$dir
    S360_PG_TMP_BIN=$bin
    # Stop and delete it whatever happens; INT/TERM go through exit so the EXIT trap runs.
    trap s360_pg_stop_throwaway EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    chmod 700 "$dir"
    [[ $EUID -eq 0 ]] && chown postgres: "$dir"

    s360_log "starting a throwaway PostgreSQL cluster in $dir on port $port ($bin)"
    if ! s360_pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        return 1
    fi
    if ! s360_pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -k /tmp -c fsync=off -c max_connections=200" start >/dev/null 2>&1; then
        cat "$dir/server.log" >&2 2>/dev/null || true
        return 1
    fi
    local url="postgres://postgres@127.0.0.1:$port/postgres"
    s360_pg_ok "$url" || return 1
    export TEST_POSTGRES_URL=$url
}

s360_pg_ensure() {
    command -v psql >/dev/null 2>&1 || s360_pg_install_if_missing
    command -v psql >/dev/null 2>&1 || s360_die "psql not found and could not be installed (apt-get install postgresql-client)"

    if [[ -n "${TEST_POSTGRES_URL:-}" ]]; then
        s360_pg_ok "$TEST_POSTGRES_URL" || s360_die "TEST_POSTGRES_URL is set but the server does not answer 'select 1'"
        export TEST_POSTGRES_URL
        s360_log "postgres: using TEST_POSTGRES_URL from the environment"
        return 0
    fi
    if s360_pg_machine_cluster_ok; then
        export TEST_POSTGRES_URL=$S360_PG_DEFAULT_URL
        s360_log "postgres: machine cluster at 127.0.0.1:5432"
        return 0
    fi
    s360_pg_install_if_missing
    if s360_pg_start_machine_cluster; then
        export TEST_POSTGRES_URL=$S360_PG_DEFAULT_URL
        s360_log "postgres: machine cluster at 127.0.0.1:5432 (started)"
        return 0
    fi
    if s360_pg_start_throwaway; then
        s360_log "postgres: throwaway cluster at ${TEST_POSTGRES_URL#postgres://postgres@}"
        return 0
    fi
    s360_die "no PostgreSQL server for the tests: 127.0.0.1:5432 does not answer, the machine cluster did not start, and a throwaway cluster could not be created. Set TEST_POSTGRES_URL=postgres://... to use another server."
}

# Drop databases named s360t_* left over by earlier runs. On a shared server another
# engineer's run may be using some right now: by default those with open connections
# are left alone; with CI=true (the CI machine is ours alone) or
# SECUR360_PG_FORCE_DROP=1 they are dropped WITH (FORCE); SECUR360_PG_FORCE_DROP=0 never forces.
s360_pg_drop_leftovers() {
    local url=${TEST_POSTGRES_URL:?} force=0 dbs db n=0 skipped=0
    if [[ "${SECUR360_PG_FORCE_DROP:-}" == "1" || ( -z "${SECUR360_PG_FORCE_DROP:-}" && "${CI:-}" == "true" ) ]]; then
        force=1
    fi
    if [[ $force -eq 1 ]]; then
        dbs=$(psql "$url" -X -Atc "select datname from pg_database where datname like 's360t\_%'")
    else
        dbs=$(psql "$url" -X -Atc "select datname from pg_database d where datname like 's360t\_%'
                                   and not exists (select 1 from pg_stat_activity a where a.datid = d.oid)")
        skipped=$(psql "$url" -X -Atc "select count(*) from pg_database d where datname like 's360t\_%'
                                   and exists (select 1 from pg_stat_activity a where a.datid = d.oid)")
    fi
    while IFS= read -r db; do
        [[ -n "$db" ]] || continue
        if [[ $force -eq 1 ]]; then
            psql "$url" -X -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
        else
            psql "$url" -X -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
        fi
        n=$((n + 1))
    done <<<"$dbs"
    if [[ $n -gt 0 || $skipped -gt 0 ]]; then
        s360_log "postgres: dropped $n leftover s360t_* database(s); left $skipped in use"
    fi
}
