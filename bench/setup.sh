#!/usr/bin/env bash
# Installs the benchmark's peers, each where it cannot disturb Datamon's own dependencies:
#   bench/.peers/dvc/    a venv with DVC (and matplotlib, used by the report for the chart)
#   bench/.peers/oxen/   a venv with Oxen (PyPI oxenai), if it installs here
#   restic, hyperfine, time from Debian's packages (apt-get).
# Every step is attempted; a step that fails is written to bench/.peers/setup.log and to
# bench/.peers/status.json so that the report can say why a peer is missing.
# Usage: bench/setup.sh            (idempotent; re-running skips what is already there)
set -uo pipefail
cd "$(dirname "$0")"
PEERS="$PWD/.peers"
mkdir -p "$PEERS"
LOG="$PEERS/setup.log"
: >"$LOG"
PYTHON="${PYTHON:-python3}"
declare -A STATUS

note() { echo "[setup] $*" | tee -a "$LOG"; }

run_step() { # name, command...
    local name="$1"
    shift
    note "$name: $*"
    if "$@" >>"$LOG" 2>&1; then
        STATUS[$name]="ok"
    else
        STATUS[$name]="failed (exit $?): see bench/.peers/setup.log"
        note "$name FAILED"
    fi
}

# --- Debian packages -------------------------------------------------------------------
apt_install() {
    local missing=""
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        $sudo apt-get install -y -qq --no-install-recommends $missing
}
run_step restic apt_install restic
run_step time apt_install time
run_step hyperfine apt_install hyperfine # optional: only used if present

# --- DVC (and matplotlib) in their own venv ---------------------------------------------
dvc_install() {
    [ -x "$PEERS/dvc/bin/dvc" ] && "$PEERS/dvc/bin/python" -c "import matplotlib" && return 0
    "$PYTHON" -m venv "$PEERS/dvc" &&
        "$PEERS/dvc/bin/pip" install -q --disable-pip-version-check dvc matplotlib
}
run_step dvc dvc_install

# --- Oxen (PyPI oxenai) in its own venv: a try, not a requirement ------------------------
oxen_install() {
    if [ ! -x "$PEERS/oxen/bin/python" ] || ! "$PEERS/oxen/bin/python" -c "import oxen"; then
        "$PYTHON" -m venv "$PEERS/oxen" &&
            "$PEERS/oxen/bin/pip" install -q --disable-pip-version-check oxenai || return 1
    fi
    # Prove it runs: init a repo, add a file, commit.
    local tmp
    tmp=$(mktemp -d)
    echo hello >"$tmp/a.txt"
    # Oxen keeps its user config under $HOME: give it a throw-away one, as bench/run.py does.
    HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/home/.config" "$PEERS/oxen/bin/python" - "$tmp" <<'EOF'
import sys
import oxen
import oxen.user
oxen.user.config_user("bench", "bench@localhost")
repo = oxen.Repo(sys.argv[1])
repo.init()
repo.add(sys.argv[1] + "/a.txt")
repo.commit("smoke")
print("oxen ok")
EOF
    local rc=$?
    rm -rf "$tmp"
    return $rc
}
run_step oxen oxen_install

# --- status for the report ---------------------------------------------------------------
{
    echo "{"
    first=1
    for k in "${!STATUS[@]}"; do
        [ $first = 1 ] || echo ","
        first=0
        printf '  "%s": "%s"' "$k" "${STATUS[$k]}"
    done
    echo
    echo "}"
} >"$PEERS/status.json"
note "status: $(tr -d '\n' <"$PEERS/status.json")"
# Only restic and DVC are required; Oxen and hyperfine are optional.
[ "${STATUS[restic]}" = ok ] && [ "${STATUS[dvc]}" = ok ]
