#!/usr/bin/env bash
# ./run.sh            install into .venv on first use, then run the job on configs/local.yaml
# ./run.sh test [..]  run the test suite (extra args go to pytest)
# ./run.sh ARGS       run the job with ARGS (e.g. --config configs/twelvelabs.yaml)
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="$VENV/bin/python"

stamp_of() { cat setup.py | sha1sum | cut -c1-16; }

ensure_venv() {
  local want="$1" stamp="$VENV/.installed-$1-$(stamp_of)"
  [ -f "$stamp" ] && return 0
  if [ ! -x "$PY" ]; then
    echo "run.sh: creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  echo "run.sh: installing the project into $VENV ($want)" >&2
  local spec="."
  [ "$want" = test ] && spec=".[test]"
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
USAGE
    ensure_venv main
    exec "$PY" -m pipeline --help
    ;;
  test)
    shift
    ensure_venv test
    exec "$PY" -m pytest "$@"
    ;;
  bench)
    # The peers include the official SDK, a test dependency.
    shift
    ensure_venv test
    exec "$PY" -m bench "$@"
    ;;
  *)
    ensure_venv main
    if [ $# -eq 0 ]; then
      exec "$PY" -m pipeline --config configs/local.yaml
    fi
    exec "$PY" -m pipeline "$@"
    ;;
esac
