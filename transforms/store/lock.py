"""One run per output folder: overlapping runs (a schedule firing twice) would pay for the same items.

Works on local disks and object stores alike, through Beam FileSystems: each run writes its own claim
`OUTPUT/locks/<run_id>.json`, and proceeds only if a listing made after its claim was written shows no other
live claim. Two runs can never both proceed, however slow a claim's write: of two claims, the one that became
visible second was listed by its own run after both were visible, so that run saw the other claim and stopped
(this needs listings that show what was written, as local disks, S3 and GCS give). Which run stops when both
see each other goes by the time each began to claim; the earlier one waits up to SETTLE_SEC for the later
one, which saw it, to withdraw.
A claim is live while it was rewritten (every HEARTBEAT_SEC) less than STALE_SEC before the newest claim, by
the store's own clock (a writer with a wrong clock cannot make a live claim look dead), and, on this host,
while its process is alive: a killed run's claim does not block the next one for long.
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

from transforms.store.layout import LOCKS_DIR, commit, mkdirs

__all__ = ["LOCKS_DIR", "OutputLocked", "OutputLock"]

_LOGGER = logging.getLogger(__name__)
HEARTBEAT_SEC = 30.0
STALE_SEC = 180.0
# How long the earliest claimant waits for later claimants that saw it to withdraw (a list and a delete each).
SETTLE_SEC = 5.0
_POLL_SEC = 0.2


class OutputLocked(RuntimeError):
    """Another live run holds the output."""


def _now() -> float:
    return time.time()


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:
        return True  # cannot tell: counted as there


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    def __init__(self, output: str, run_id: str, stale_sec: float = STALE_SEC, heartbeat_sec: float = HEARTBEAT_SEC,
                 settle_sec: float = SETTLE_SEC):
        self._output = output
        self._dir = FileSystems.join(output, LOCKS_DIR)
        self._settle_sec = settle_sec
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
        commit(self._dir, f"{self._run_id}.json", lambda f: f.write(json.dumps(claim).encode("utf-8")))

    def _claims(self) -> List[Tuple[dict, str, float]]:
        """(claim, path, the store's last-modified time or 0) of every readable claim."""
        try:
            found = FileSystems.match([FileSystems.join(self._dir, "*.json")])[0].metadata_list
        except Exception:
            return []
        claims = []
        for meta in found:
            try:
                with FileSystems.open(meta.path, compression_type="uncompressed") as f:
                    claim = json.loads(f.read().decode("utf-8"))
            except ValueError:
                continue  # not a claim
            except Exception:
                if not _exists(meta.path):
                    continue  # withdrawn since the listing
                claim = {"run_id": meta.path.rsplit("/", 1)[-1][:-len(".json")], "heartbeat": _now()}  # unread: live
            claims.append((claim, meta.path, float(getattr(meta, "last_updated_in_seconds", 0) or 0)))
        return claims

    def _live_others(self) -> List[dict]:
        """The other runs' live claims; dead ones are deleted on the way."""
        claims = self._claims()
        # Ages by the store's clock where it gives one: the newest claim's time, not this machine's, is "now".
        store_now = max((updated for _, _, updated in claims), default=0.0)
        live = []
        for claim, path, updated in claims:
            if claim.get("run_id") == self._run_id:
                continue
            if store_now and updated:
                age = store_now - updated
            else:
                age = _now() - float(claim.get("heartbeat", 0))
            alive = age <= self._stale_sec
            if alive and claim.get("host") == self._host and isinstance(claim.get("pid"), int):
                alive = _pid_alive(claim["pid"])
            if alive:
                live.append(claim)
            else:
                try:
                    FileSystems.delete([path])  # a dead run's claim
                except Exception:
                    pass
        return live

    def _order(self, claim: dict) -> Tuple[float, str]:
        return float(claim.get("started", 0)), str(claim.get("run_id"))

    def acquire(self) -> None:
        mkdirs(self._dir)
        # Orders claims that see each other; who may proceed is decided after the claim is visible (below).
        self._started = _now()
        try:
            self._write()
        except Exception as exc:
            from transforms.settings import ConfigError

            # Checked before the first call: an output that cannot take a file would waste every paid call.
            raise ConfigError(f"the output {self._output} cannot be written ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); choose a folder you can "
                              "write to") from None
        mine = self._order({"started": self._started, "run_id": self._run_id})
        deadline = time.monotonic() + self._settle_sec
        while True:
            others = self._live_others()
            if not others:
                break  # listed after this claim was visible, and alone: no other run can proceed now
            first = min(others, key=self._order)
            # A later claimant saw this claim and withdraws; one that began earlier, or that stays, holds it.
            if self._order(first) < mine or time.monotonic() >= deadline:
                self._withdraw()
                since = datetime.datetime.fromtimestamp(float(first.get("started", 0)), datetime.timezone.utc)
                raise OutputLocked(
                    f"another run ({first.get('run_id')} on {first.get('host')}, pid {first.get('pid')}, started "
                    f"{since.replace(microsecond=0).isoformat().replace('+00:00', 'Z')}) is writing to this output; "
                    f"this one stopped before any call. If that run is dead, its claim expires "
                    f"{self._stale_sec:.0f} s after its last heartbeat, or delete "
                    f"{FileSystems.join(self._dir, str(first.get('run_id')) + '.json')}")
            time.sleep(_POLL_SEC)
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
