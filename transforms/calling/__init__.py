"""The calling engine, with no Beam in it: call policies (v1, v2, tasks), per-process state, metrics."""
