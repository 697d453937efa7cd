"""A local emulator of the TwelveLabs embed API (POST /v1.3/embed).

    from embed_emulator import Emulator, EmulatorConfig
    with Emulator(EmulatorConfig(requests_per_minute=600)) as emulator:
        ...  # point a client at emulator.base_url

Same wire format, errors and limits as the real endpoint; vectors are deterministic and
derived from content (see vectors.py), not from a model.
"""
from .config import EmulatorConfig
from .stats import item_key

__all__ = ["EmulatorConfig", "Emulator", "serve", "item_key"]


def __getattr__(name):
    # The server needs the [emulator] extra (multipart parser, media decoders); the config does not, so a job
    # with a real endpoint can check its `emulator` settings without it.
    if name in ("Emulator", "serve"):
        try:
            from . import server
        except ImportError as exc:
            raise ImportError(f"the embedded emulator needs `pip install 'tl-embed-pipeline[emulator]'` "
                              f"({exc.name or exc} is missing); ./run.sh installs it") from exc
        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
