"""The embedding job: config, graph assembly and the command line (`python -m pipeline`)."""
import os

# Arrow picks its C++ allocator once, when pyarrow is first imported (which `import apache_beam` does). The
# system allocator gives freed buffers back where mimalloc keeps them: the job reads and writes Parquet a row
# group at a time, and kept buffers made a rerun's memory grow with the output (see transforms/memory.py).
# A default only: a user's own setting wins, and a process that imported pyarrow already keeps its allocator.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
