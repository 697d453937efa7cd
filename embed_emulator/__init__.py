"""A local emulator of the TwelveLabs embed API (POST /v1.3/embed).

    from embed_emulator import Emulator, EmulatorConfig
    with Emulator(EmulatorConfig(requests_per_minute=600)) as emulator:
        ...  # point a client at emulator.base_url

Same wire format, errors and limits as the real endpoint; vectors are deterministic and
derived from content (see vectors.py), not from a model.
"""
from .config import EmulatorConfig
from .server import Emulator, serve
from .stats import item_key

__all__ = ["EmulatorConfig", "Emulator", "serve", "item_key"]
