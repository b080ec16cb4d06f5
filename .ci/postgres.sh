# Sourced by .ci/run: a PostgreSQL server of CI's own for the sweep tests, stopped when the run ends.
# Debian's postgresql is installed if missing; the server lives in a temporary folder, listens on
# 127.0.0.1 only (a free port) and on a socket in that folder, and the tests get a fresh database in
# FASTNN_POSTGRES_URL (tests/test_sweep.py skips its PostgreSQL tests without it).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
pg_user=postgres  # initdb refuses root
pg_dir=$(mktemp -d)
chown "$pg_user" "$pg_dir"
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() { if [ "$(id -u)" = 0 ]; then su "$pg_user" -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
as_pg "'$pg_bin/initdb' -D '$pg_dir/data' -U postgres -A trust --no-sync -E UTF8" >/dev/null
as_pg "'$pg_bin/pg_ctl' -D '$pg_dir/data' -l '$pg_dir/log' -w -o \"-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off\" start" >/dev/null
stop_postgres() { as_pg "'$pg_bin/pg_ctl' -D '$pg_dir/data' -m fast -w stop" >/dev/null || true; rm -rf "$pg_dir"; }
trap stop_postgres EXIT
pg_db="fastnn_test_$$"
as_pg "'$pg_bin/createdb' -h 127.0.0.1 -p $pg_port -U postgres $pg_db"
export FASTNN_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/$pg_db"
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port, database $pg_db"
