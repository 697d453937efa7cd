"""`python -m pipeline` with the output claim's first write held back (tests of the lock on slow stores).

Usage: python tests/slow_claim_cli.py SIGNAL_FILE GO_FILE [job flags]: SIGNAL_FILE is created when the claim's
write begins; the write then waits until GO_FILE exists (at most 120 s) before it reaches the store.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.store import lock  # noqa: E402

_signal, _go = sys.argv[1], sys.argv[2]
_original = lock.OutputLock._write
_held = []


def _slow_write(self):
    if not _held:  # the claim, not the heartbeats after it
        _held.append(True)
        open(_signal, "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(_go) and time.monotonic() < deadline:
            time.sleep(0.05)
    _original(self)


lock.OutputLock._write = _slow_write

if __name__ == "__main__":
    from pipeline.__main__ import main

    code = main(sys.argv[3:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
