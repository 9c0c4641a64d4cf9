#!/usr/bin/env bash
# `make demo-mongodb`: the demo of `make demo`, on the MongoDB store. Builds
# FerretDB when needed, runs it on a free loopback port with its files in
# $SIGIL_HOME/ferretdb, and stops it at the end, whatever happened. The demo
# gets a home of its own there (token, keys, API key file), which the SQLite
# demo's home would not match: its API key is in the SQLite database.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
home="${SIGIL_HOME:-$PWD/var}/ferretdb"
export SIGIL_HOME="$home/sigil"

bash scripts/ensure-ferretdb.sh
mkdir -p "$home" "$SIGIL_HOME"
out="$home/stdout"
: >"$out"

"$PY" -m devtools.ferretdb --data "$home/data" --log "$home/ferretdb.log" >"$out" &
ferretdb_pid=$!
stop_ferretdb() {
  kill -TERM "$ferretdb_pid" 2>/dev/null || true
  wait "$ferretdb_pid" 2>/dev/null || true
}
trap stop_ferretdb EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

uri=""
for _ in $(seq 400); do # 40 s; devtools.ferretdb gives up after 30 s
  uri="$(grep -m1 '^mongodb://' "$out" || true)"
  [ -n "$uri" ] && break
  if ! kill -0 "$ferretdb_pid" 2>/dev/null; then
    echo "FerretDB did not start; its log: $home/ferretdb.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$uri" ]; then
  echo "FerretDB did not start in time; its log: $home/ferretdb.log" >&2
  exit 1
fi

export MONGODB_URI="$uri"
export SIGIL_MONGODB_DB="${SIGIL_MONGODB_DB:-sigil_demo}"
echo "==> FerretDB on $MONGODB_URI, database $SIGIL_MONGODB_DB, files in $home"
echo "==> SIGIL_HOME=$SIGIL_HOME"
"$(dirname "$PY")/sigil" init
"$PY" -m rp_client.demo
