"""Fault injection: 429 bursts, dropped and hung connections, 5xx, malformed 200s and
per-modality errors, drawn from one seeded RNG so a run can be replayed.

Only the draws for knobs above zero consume randomness, so turning one fault on does not
reshuffle another's sequence when the rest are off.
"""
from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .config import EmulatorConfig

__all__ = ["FaultInjector", "Fault", "INTERNAL_ERROR_BODY", "HTML_5XX", "MALFORMED_BODIES"]

INTERNAL_ERROR_BODY = {"code": "internal_error",
                       "message": "An internal error occurred. Please try again later."}
# Gateways in front of real APIs answer with HTML, not JSON (emulator choice, for realism).
HTML_5XX = {
    502: b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
         b"</h1></center></body></html>\n",
    503: b"<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
         b"<h1>503 Service Temporarily Unavailable</h1></center></body></html>\n",
}
MALFORMED_BODIES = (
    b'{"model_name":"marengo3.0","text_embedding":{"segments":[{"float":[0.0123,-0.04',
    b"<html><body>upstream connect error or disconnect/reset before headers</body></html>",
    b"",
)


@dataclass
class Fault:
    """What to do instead of (or on top of) normal processing."""
    kind: str  # "429_burst" | "drop" | "hang" | "5xx" | "malformed"
    retry_after_sec: int = 0
    status: int = 0
    body_index: int = 0


class FaultInjector:
    def __init__(self, seed: Optional[int] = None):
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._burst_until = 0.0

    def reseed(self, seed: Optional[int]) -> None:
        with self._lock:
            self._rng = random.Random(seed)
            self._burst_until = 0.0

    def _hit(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def request_fault(self, config: EmulatorConfig) -> Optional[Fault]:
        """The whole-request fault for this request, in the documented order, or None."""
        with self._lock:
            now = time.monotonic()
            if now < self._burst_until or self._hit(config.fault_429_burst_rate):
                if now >= self._burst_until:
                    self._burst_until = now + config.fault_429_burst_sec
                return Fault("429_burst", retry_after_sec=max(1, math.ceil(self._burst_until - now)))
            if self._hit(config.fault_drop_rate):
                return Fault("drop")
            if self._hit(config.fault_hang_rate):
                return Fault("hang")
            if self._hit(config.fault_5xx_rate):
                draw = self._rng.random()
                return Fault("5xx", status=500 if draw < 0.7 else (502 if draw < 0.85 else 503))
            if self._hit(config.fault_malformed_rate):
                return Fault("malformed", body_index=self._rng.randrange(len(MALFORMED_BODIES)))
            return None

    def modality_fails(self, config: EmulatorConfig) -> bool:
        """Whether one modality item of a call gets an injected error_message."""
        with self._lock:
            return self._hit(config.fault_modality_error_rate)

    def chunk_put_fails(self, config: EmulatorConfig) -> bool:
        """Whether one chunk PUT to a presigned URL is answered 500 (chunk_put_fail_rate)."""
        with self._lock:
            return self._hit(config.chunk_put_fail_rate)

    def latency_sec(self, config: EmulatorConfig) -> float:
        """Latency plus uniform jitter, never negative."""
        if config.latency_ms <= 0 and config.latency_jitter_ms <= 0:
            return 0.0
        with self._lock:
            jitter = self._rng.uniform(-config.latency_jitter_ms, config.latency_jitter_ms) \
                if config.latency_jitter_ms > 0 else 0.0
        return max(0.0, config.latency_ms + jitter) / 1000.0
