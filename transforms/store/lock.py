"""One run per output folder: overlapping runs (a schedule firing twice) would pay for the same items.

Works on local disks and object stores alike, through Beam FileSystems: each run writes its own claim
`OUTPUT/locks/<run_id>.json`, then lists the claims; the oldest live claim wins and the others withdraw.
A claim is live while its heartbeat (rewritten every HEARTBEAT_SEC) is younger than STALE_SEC, and, on
this host, while its process is alive: a killed run's claim does not block the next one for long.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
from typing import List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from transforms.store.layout import LOCKS_DIR, mkdirs

__all__ = ["LOCKS_DIR", "OutputLocked", "OutputLock"]

_LOGGER = logging.getLogger(__name__)
HEARTBEAT_SEC = 30.0
STALE_SEC = 180.0


class OutputLocked(RuntimeError):
    """Another live run holds the output."""


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    def __init__(self, output: str, run_id: str, stale_sec: float = STALE_SEC, heartbeat_sec: float = HEARTBEAT_SEC):
        self._dir = FileSystems.join(output, LOCKS_DIR)
        self._run_id = run_id
        self._path = FileSystems.join(self._dir, f"{run_id}.json")
        self._stale_sec = stale_sec
        self._heartbeat_sec = heartbeat_sec
        self._started = _now()
        self._host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _write(self) -> None:
        claim = {"run_id": self._run_id, "host": self._host, "pid": os.getpid(), "started": self._started,
                 "heartbeat": _now()}
        temp = self._path + ".tmp"
        with FileSystems.create(temp, compression_type="uncompressed") as f:
            f.write(json.dumps(claim).encode("utf-8"))
        FileSystems.rename([temp], [self._path])

    def _claims(self) -> List[Tuple[dict, str]]:
        try:
            found = FileSystems.match([FileSystems.join(self._dir, "*.json")])[0].metadata_list
        except Exception:
            return []
        claims = []
        for meta in found:
            try:
                with FileSystems.open(meta.path, compression_type="uncompressed") as f:
                    claims.append((json.loads(f.read().decode("utf-8")), meta.path))
            except Exception:
                continue  # half-written or just withdrawn
        return claims

    def _live(self, claim: dict) -> bool:
        if claim.get("run_id") == self._run_id:
            return True
        if _now() - float(claim.get("heartbeat", 0)) > self._stale_sec:
            return False
        if claim.get("host") == self._host and isinstance(claim.get("pid"), int):
            return _pid_alive(claim["pid"])
        return True

    def acquire(self) -> None:
        mkdirs(self._dir)
        self._started = _now()  # claim order is write order: a later writer always sees the earlier claim
        try:
            self._write()
        except Exception as exc:
            from transforms.settings import ConfigError

            # Checked before the first call: an output that cannot take a file would waste every paid call.
            raise ConfigError(f"the output {self._dir.rsplit('/', 2)[0]} cannot be written ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); choose a folder you can "
                              "write to") from None
        claims = self._claims()
        live = [c for c, _ in claims if self._live(c)]
        for claim, path in claims:
            if not self._live(claim):
                try:
                    FileSystems.delete([path])  # a dead run's claim
                except Exception:
                    pass
        winner = min(live, key=lambda c: (float(c.get("started", 0)), str(c.get("run_id"))))
        if winner.get("run_id") != self._run_id:
            self._withdraw()
            since = datetime.datetime.fromtimestamp(float(winner.get("started", 0)), datetime.timezone.utc)
            raise OutputLocked(
                f"another run ({winner.get('run_id')} on {winner.get('host')}, pid {winner.get('pid')}, started "
                f"{since.replace(microsecond=0).isoformat().replace('+00:00', 'Z')}) is writing to this output; "
                f"this one stopped before any call. If that run is dead, its claim expires {self._stale_sec:.0f} s "
                f"after its last heartbeat, or delete {FileSystems.join(self._dir, str(winner.get('run_id')) + '.json')}")
        self._thread = threading.Thread(target=self._beat, name="output-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_sec):
            try:
                self._write()
            except Exception as exc:  # the next beat tries again; a missed one only ages the claim
                _LOGGER.warning("could not refresh the output lock: %s", exc)

    def _withdraw(self) -> None:
        try:
            FileSystems.delete([self._path])
        except Exception:
            pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._withdraw()

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
