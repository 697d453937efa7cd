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
MAIN_EXTRAS="emulator,redis"
TEST_EXTRAS="emulator,redis,dask,test"
# A new setup.py or a new list of extras installs again.
stamp_of() { { cat "$HERE/setup.py"; echo "$MAIN_EXTRAS $TEST_EXTRAS"; } | sha1sum | cut -c1-16; }

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
  if ! "$PY" -m pip install -q -e "$spec" >"$VENV/install.log" 2>&1; then
    cat "$VENV/install.log" >&2
    echo "run.sh: install failed (log above, also in $VENV/install.log)" >&2
    exit 1
  fi
  touch "$stamp"
}

case "${1:-}" in
  -h|--help)
    cat <<'USAGE'
usage: ./run.sh                 install into .venv on first use, run the job on configs/local.yaml
       ./run.sh test [PYTEST]   run the test suite
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
    ensure_venv test
    cd "$HERE"  # the suite's paths are the project's
    exec "$PY" -m pytest "$@"
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
