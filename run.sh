#!/usr/bin/env bash
# ./run.sh            install into .venv on first use, then run the job on configs/local.yaml
# ./run.sh test [..]  run the test suite (extra args go to pytest)
# ./run.sh ARGS       run the job with ARGS (e.g. --config configs/twelvelabs.yaml)
set -euo pipefail
# The caller's folder is kept: relative paths on the command line are theirs.
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv"
PY="$VENV/bin/python"

# What each install holds: the library plus the emulator (the embedded default) and redis; tests add the rest.
MAIN_EXTRAS="emulator,redis,index"
TEST_EXTRAS="emulator,redis,index,dask,test"
# The exact versions the suite last passed with (README "Versions"). It is made for the Python it names in its
# first lines; another Python installs from setup.py's ranges instead, with a warning.
LOCK="$HERE/constraints.txt"
# A new setup.py, lock or list of extras installs again.
stamp_of() { { cat "$HERE/setup.py" "$LOCK" 2>/dev/null; echo "$MAIN_EXTRAS $TEST_EXTRAS"; } | sha1sum | cut -c1-16; }

lock_args() {
  [ -f "$LOCK" ] || return 0
  local want have
  want="$(sed -n 's/^# python \([0-9][0-9.]*\).*/\1/p' "$LOCK" | head -n1)"
  have="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ "$want" = "$have" ]; then
    echo "-c $LOCK"
  else
    echo "run.sh: constraints.txt was tested on Python $want, this is $have: installing from setup.py's ranges" >&2
  fi
}

ensure_venv() {
  local want="$1" stamp="$VENV/.installed-$1-$(stamp_of)"
  [ -f "$stamp" ] && return 0
  # The test install is a superset of the main one.
  [ "$want" = main ] && [ -f "$VENV/.installed-test-$(stamp_of)" ] && return 0
  if [ ! -x "$PY" ]; then
    echo "run.sh: creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  echo "run.sh: installing the project into $VENV ($want)" >&2
  local spec="$HERE[$MAIN_EXTRAS]"
  [ "$want" = test ] && spec="$HERE[$TEST_EXTRAS]"
  # shellcheck disable=SC2046
  if ! "$PY" -m pip install -q $(lock_args) -e "$spec" >"$VENV/install.log" 2>&1; then
    cat "$VENV/install.log" >&2
    echo "run.sh: install failed (log above, also in $VENV/install.log)" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

# The suite on every core (pytest-xdist), then the few tests that judge pacing by the wall clock (marked
# `serial`) alone, so a neighbour's load cannot skew them. A selection of the caller's own (-n, -m, -p) runs as given.
run_suite() {
  local py="$1"; shift
  local arg
  for arg in "$@"; do
    case "$arg" in
      -n|-n*|--numprocesses*|-m|-m*|-p|-p*|--dist*) "$py" -m pytest "$@"; return ;;
    esac
  done
  local status=0 alone=0
  "$py" -m pytest -n "${TEST_PROCESSES:-auto}" -m "not serial" "$@" || status=$?
  "$py" -m pytest -p no:xdist -m serial "$@" || alone=$?
  # 5 is pytest's "no test selected": fine for one part, not for both.
  if [ "$status" -eq 5 ] && [ "$alone" -ne 5 ]; then status=0; fi
  if [ "$alone" -eq 5 ]; then alone=0; fi
  [ "$status" -ne 0 ] && return "$status"
  return "$alone"
}

# ./run.sh test --newest: the newest releases of every dependency (setup.py's upper bounds lifted, the lock
# ignored) in a scratch venv, then the suite. It finds the next break before a fresh install does.
run_newest() {
  local venv="$HERE/.venv-newest" py="$HERE/.venv-newest/bin/python"
  rm -rf "$venv"
  echo "run.sh: installing the newest releases into $venv" >&2
  python3 -m venv "$venv"
  "$py" -m pip install -q --upgrade pip >"$venv/install.log" 2>&1 || true
  if ! "$py" -m pip install -q --no-deps -e "$HERE" >>"$venv/install.log" 2>&1; then
    cat "$venv/install.log" >&2; echo "run.sh: install failed" >&2; exit 1
  fi
  # Every requirement of the test install by name only (pins written == stay: the SDK is the wire reference).
  local names
  names="$("$py" - "$TEST_EXTRAS" <<'PY'
import sys
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
wanted = sys.argv[1].split(",")
for line in requires("tl-embed-pipeline"):
    req = Requirement(line)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
        continue
    pinned = [s for s in req.specifier if s.operator == "=="]
    own = f"[{','.join(sorted(req.extras))}]" if req.extras else ""  # moto[server], apache-beam[aws]
    print(f"{req.name}{own}{''.join(str(s) for s in pinned)}")
PY
)"
  # shellcheck disable=SC2086
  if ! "$py" -m pip install -q --upgrade --upgrade-strategy eager $names >>"$venv/install.log" 2>&1; then
    cat "$venv/install.log" >&2; echo "run.sh: install failed" >&2; exit 1
  fi
  "$py" -m pip freeze --exclude-editable >"$venv/constraints.txt"
  echo "run.sh: newest releases:" $("$py" -m pip list --format=freeze 2>/dev/null |
    grep -iE '^(apache-beam|pyarrow|numpy|tenacity|requests|dask|redis|av|twelvelabs)==' | tr '\n' ' ') >&2
  cd "$HERE"
  local status=0
  run_suite "$py" "$@" || status=$?
  if [ "$status" -eq 0 ]; then
    echo "run.sh: the suite passed on the newest releases; to adopt them: ./run.sh lock --from-newest" >&2
  fi
  exit "$status"
}

# ./run.sh lock [--from-newest]: write constraints.txt from the test venv (or the newest one) after its suite passed.
write_lock() {
  local py="$PY"
  [ "${1:-}" = "--from-newest" ] && py="$HERE/.venv-newest/bin/python"
  [ -x "$py" ] || { echo "run.sh: no venv at ${py%/bin/python}: run ./run.sh test first" >&2; exit 2; }
  {
    echo "# python $("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ($(uname -m), $(date -u +%Y-%m-%d))"
    echo "# The exact set the suite last passed with; ./run.sh, ./run.sh test and .ci/run install with it."
    echo "# Made by ./run.sh lock; README \"Versions\" says when to move it."
    "$py" -m pip freeze --exclude-editable | grep -v '^tl-embed-pipeline' | LC_ALL=C sort -f
  } >"$LOCK.new"
  mv "$LOCK.new" "$LOCK"
  echo "run.sh: wrote $LOCK" >&2
}

case "${1:-}" in
  -h|--help)
    cat <<'USAGE'
usage: ./run.sh                 install into .venv on first use, run the job on configs/local.yaml
       ./run.sh test [PYTEST]   run the test suite (installs the locked versions, constraints.txt)
       ./run.sh test --newest   the suite on the newest releases of every dependency, in .venv-newest
       ./run.sh lock [--from-newest]  write constraints.txt from the venv whose suite just passed
       ./run.sh bench [--full]  the benchmark against peers (see BENCHMARKS.md)
       ./run.sh [JOB ARGS]      run the job:  ./run.sh --config configs/twelvelabs.yaml --manifest 'data/*.jsonl'
       ./run.sh search ...      nearest rows: ./run.sh search --text 'a dog in a park' -k 5
       ./run.sh config          every config key: type, range, default, meaning
USAGE
    ensure_venv main
    exec "$PY" -m pipeline --help
    ;;
  test)
    shift
    if [ "${1:-}" = "--newest" ]; then
      shift
      run_newest "$@"
    fi
    ensure_venv test
    cd "$HERE"  # the suite's paths are the project's
    status=0
    run_suite "$PY" "$@" || status=$?
    exit "$status"
    ;;
  lock)
    shift
    write_lock "$@"
    exit 0
    ;;
  bench)
    # The peers include the official SDK, a test dependency.
    shift
    ensure_venv test
    cd "$HERE"
    exec "$PY" -m bench "$@"
    ;;
  *)
    ensure_venv main
    if [ $# -eq 0 ]; then
      exec "$PY" -m pipeline --config "$HERE/configs/local.yaml"
    fi
    exec "$PY" -m pipeline "$@"
    ;;
esac
