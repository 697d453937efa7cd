"""The models the job can call and what each allows (one table; the route decision lives beside it)."""
from __future__ import annotations

# Vector length per model (marengo3.5's can be chosen: 128, 256 or 512).
MODEL_DIMS = {"marengo3.0": 512, "marengo3.5": 512, "marengo2.7": 1024, "Marengo-retrieval-2.7": 1024}
