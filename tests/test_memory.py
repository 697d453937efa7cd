"""The job's allocators give freed memory back (transforms/memory.py); a user's own choice wins."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Arrow's C++ default allocator, as chosen when pyarrow was imported (by `import pipeline.run`, as the CLI
# does); then the pool pyarrow uses after the job's setup.
PROBE = ("import pipeline.run, pyarrow as pa; print(pa.default_memory_pool().backend_name); "
         "from transforms.memory import return_freed_memory; return_freed_memory(); return_freed_memory(); "
         "print(pa.default_memory_pool().backend_name)")


def _backend(**env) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=environment, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    at_import, after_setup = out.stdout.strip().splitlines()[-2:]
    assert at_import == after_setup
    return at_import


def test_the_job_uses_the_system_allocator_for_arrow():
    assert _backend() == "system"


@pytest.mark.parametrize("chosen", ["mimalloc", "jemalloc"])
def test_a_users_arrow_allocator_is_kept(chosen):
    import pyarrow as pa

    available = {"mimalloc": pa.mimalloc_memory_pool, "jemalloc": pa.jemalloc_memory_pool}[chosen]
    try:
        available()
    except NotImplementedError:
        pytest.skip(f"this pyarrow has no {chosen}")
    assert _backend(ARROW_DEFAULT_MEMORY_POOL=chosen) == chosen
