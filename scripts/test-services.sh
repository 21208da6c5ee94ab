#!/usr/bin/env bash
# What the test suite needs beyond Python, set up before pytest (`make test` runs this):
#   - a throwaway PostgreSQL cluster in /tmp, on 127.0.0.1 only, for the serve tests' real-server
#     check; its URL goes to .test-services/postgres.url (or the reason it could not, to
#     .test-services/postgres.skip, and that test skips with it);
#   - Debian's chromium (and a small CJK font for the screenshots of Chinese text), for the
#     playground's headless-browser test (skipped when chromium is missing).
# Installs with apt-get when missing (as root, or with passwordless sudo). Never fails the build;
# a second run reuses a cluster that is still up.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=.test-services
PGDATA=/tmp/lmforge-test-pg
PGPORT=${LMFORGE_TEST_PG_PORT:-55432}
DATABASE=lmforge_test
mkdir -p "$OUT"
rm -f "$OUT/postgres.url" "$OUT/postgres.skip"

log() { echo "test-services: $*" >&2; }
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 1; fi
}
skip_postgres() { echo "$1" >"$OUT/postgres.skip"; log "PostgreSQL test will skip: $1"; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

missing=()
[ -n "$(pg_bin)" ] || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing+=(fonts-wqy-microhei)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
        >"$OUT/apt.log" 2>&1; then
        log "apt-get failed (see $OUT/apt.log)"
    fi
fi

start_postgres() {
    local bin; bin=$(pg_bin)
    if [ -z "$bin" ]; then
        skip_postgres "PostgreSQL is not installed and apt-get could not install it"
        return
    fi
    # PostgreSQL refuses to run as root: as root the cluster belongs to the postgres user.
    local run=()
    if [ "$(id -u)" = 0 ]; then
        if ! id postgres >/dev/null 2>&1; then
            skip_postgres "running as root and there is no postgres user to run the server"
            return
        fi
        run=(runuser -u postgres --)
    fi
    if ! "${run[@]}" "$bin/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; then
        rm -rf "$PGDATA" && mkdir -p "$PGDATA"
        [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA"
        if ! "${run[@]}" "$bin/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 \
            >"$OUT/initdb.log" 2>&1; then
            skip_postgres "initdb failed (see $OUT/initdb.log)"
            return
        fi
        if ! "${run[@]}" "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
            -o "-h 127.0.0.1 -p $PGPORT -k $PGDATA -F" start >"$OUT/pg_ctl.log" 2>&1; then
            skip_postgres "the server did not start (see $PGDATA/server.log)"
            return
        fi
    fi
    if ! "${run[@]}" "$bin/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" | grep -q 1; then
        "${run[@]}" "$bin/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres "$DATABASE"
    fi
    echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/$DATABASE" >"$OUT/postgres.url"
    log "PostgreSQL ready at 127.0.0.1:$PGPORT (data in $PGDATA)"
}

start_postgres
[ -x /usr/bin/chromium ] && log "chromium: $(/usr/bin/chromium --version 2>/dev/null)"
exit 0
