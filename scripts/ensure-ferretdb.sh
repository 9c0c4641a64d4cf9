#!/usr/bin/env bash
# Build .tools/bin/sigil-ferretdb (FerretDB on SQLite, see tools/ferretdb/)
# when it is missing or tools/ferretdb/{main.go,go.mod,go.sum} changed since
# the last build; otherwise do nothing. A stamp next to the binary holds the
# SHA-256 of those files. Needs Go >= the version in go.mod; when `go` is
# missing, installs Debian's golang-go only if that package is new enough.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/tools/ferretdb"
bin_dir="$root/.tools/bin"
binary="$bin_dir/sigil-ferretdb"
stamp="$binary.stamp"

# Keep in step with devtools/ferretdb.py, which checks the same stamp.
source_hash() {
  cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -d' ' -f1
}

want="$(source_hash)"
if [ -x "$binary" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

ferretdb_version="$(sed -n 's|^require github.com/FerretDB/FerretDB \(v[0-9.]*\).*|\1|p' "$src/go.mod")"
need_go="$(sed -n 's/^go \([0-9][0-9.]*\).*/\1/p' "$src/go.mod")"
need_go="${need_go:-1.24}"

# "1.24.3" -> 1024 (major*1000 + minor), enough to compare Go releases.
go_rank() {
  local major minor
  IFS=. read -r major minor _ <<<"$1"
  echo $((10#${major:-0} * 1000 + 10#${minor:-0}))
}

find_go() {
  if command -v go >/dev/null 2>&1; then
    command -v go
  elif [ -x /usr/local/go/bin/go ]; then
    echo /usr/local/go/bin/go
  elif [ -x /usr/lib/go/bin/go ]; then
    echo /usr/lib/go/bin/go
  fi
}

no_go() {
  echo "Go $need_go or later is needed to build FerretDB for the MongoDB tests." >&2
  echo "$1" >&2
  echo "Install Go $need_go+ (Debian 13's golang-go, or an official Go release" >&2
  echo "in /usr/local/go), put it on PATH, then run 'make ferretdb'." >&2
  exit 1
}

# Debian's golang-go, only when its candidate version is recent enough.
install_go_from_apt() {
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || return 1
    sudo="sudo"
  fi
  $sudo apt-get update -qq || return 1
  local candidate
  # "Candidate: 2:1.24~2" -> "1.24"
  candidate="$(apt-cache policy golang-go 2>/dev/null |
    sed -n 's/^ *Candidate: \([0-9]*:\)\{0,1\}\([0-9][0-9]*\.[0-9][0-9]*\).*/\2/p')"
  if [ -z "$candidate" ]; then
    echo "apt has no golang-go package" >&2
    return 1
  fi
  if [ "$(go_rank "$candidate")" -lt "$(go_rank "$need_go")" ]; then
    echo "apt's golang-go is Go $candidate, older than the $need_go needed" >&2
    return 1
  fi
  echo "installing Go $candidate (Debian package golang-go)"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq golang-go >/dev/null
}

go_bin="$(find_go)"
if [ -z "$go_bin" ]; then
  install_go_from_apt || no_go "No 'go' command was found, and apt could not install a recent enough one."
  go_bin="$(find_go)"
  [ -n "$go_bin" ] || no_go "golang-go was installed but no 'go' command appeared."
fi

have_go="$("$go_bin" env GOVERSION)" # "go1.26.8"
have_go="${have_go#go}"
if [ "$(go_rank "$have_go")" -lt "$(go_rank "$need_go")" ]; then
  no_go "Found Go $have_go at $go_bin, which is too old."
fi

# Go keeps its build and module caches under $HOME; without one, in .tools/.
if [ -z "${HOME:-}" ] && [ -z "${GOCACHE:-}" ]; then
  export GOCACHE="$root/.tools/go-build" GOPATH="$root/.tools/go"
fi

mkdir -p "$bin_dir"
# One build at a time: two test runs starting together wait for each other.
exec 9>"$bin_dir/.sigil-ferretdb.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
  if [ -x "$binary" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
  fi
fi

echo "building FerretDB ${ferretdb_version:-} with Go $have_go (first time: a minute or two)…"
tmp="$binary.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# -buildvcs=false: no VCS stamp, so a clone in any state (or without git) builds.
(cd "$src" && "$go_bin" build -buildvcs=false -trimpath -o "$tmp" .)
mv -f "$tmp" "$binary"
echo "$want" >"$stamp"
echo "built $binary"
