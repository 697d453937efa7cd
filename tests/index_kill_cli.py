"""`python -m pipeline` killed (SIGKILL) while its LanceDB sync adds rows: after the delete's commit, with one batch
of the add handed to LanceDB and nothing of it committed (tests of the index's crash safety)."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.store import vector_index  # noqa: E402

_original = vector_index._batches


def _dying(*args):
    for batch in _original(*args):
        yield batch
        os.kill(os.getpid(), signal.SIGKILL)


vector_index._batches = _dying

if __name__ == "__main__":
    from pipeline.__main__ import main

    sys.exit(main(sys.argv[1:]))
