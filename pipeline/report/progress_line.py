"""The progress line of local runs: one updating line on a terminal, a plain line now and then otherwise."""
from __future__ import annotations

import sys
import threading
from typing import Optional, Sequence, TextIO

from apache_beam.io.filesystems import FileSystems

from transforms.progress import PROGRESS
from transforms.records import manifest_format

__all__ = ["ProgressPrinter", "count_manifest_rows", "format_progress"]

_TTY_INTERVAL_SEC = 0.5
_PLAIN_INTERVAL_SEC = 10.0


def count_manifest_rows(paths: Sequence[str]) -> Optional[int]:
    """Rows in local manifests (cheap: lines, or Parquet metadata); None when any is remote."""
    total = 0
    for path in paths:
        if "://" in path:
            return None
        try:
            if manifest_format(path) == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
                continue
            with FileSystems.open(path) as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            total += max(0, lines - (1 if manifest_format(path) == "csv" else 0))
        except Exception:
            # An unreadable manifest is the job's to report (a dead letter), not the progress line's to crash on.
            return None
    return total


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def format_progress(snap: dict, rows_total: Optional[int], rate_per_minute: Optional[float]) -> str:
    elapsed = max(snap["elapsed"], 1e-6)
    calls_per_sec = snap["calls"] / elapsed
    rows = f"rows {snap['rows_read']}" + (f"/{rows_total}" if rows_total else "")
    limit = f" of {rate_per_minute / 60:.1f}" if rate_per_minute else ""
    eta, of_total = "ETA --", ""
    units = snap["items"] + snap["rejected"]  # every item, and every row rejected before it became one
    if units:
        all_read = bool(rows_total) and snap["rows_read"] >= rows_total
        # Units still to come are estimated from the rows not read yet; the total never falls below done.
        expected = units * rows_total / snap["rows_read"] if rows_total and snap["rows_read"] else units
        total = max(int(expected + 0.5), snap["done"])
        of_total = f" of {'' if all_read else '~'}{total}"
        rate = snap["done"] / elapsed
        if rate > 0 and rows_total:
            eta = f"ETA {_duration(max(0.0, total - snap['done']) / rate)}"
    return (f"{rows} | items {snap['done']}{of_total} done: {snap['embedded']} embedded, {snap['skipped']} skipped, "
            f"{snap['dead_letters']} dead, {snap['deferred']} deferred | {calls_per_sec:.1f} calls/s{limit} | "
            f"429s {snap['http_429']}{_uploaded(snap, elapsed)} | {_duration(elapsed)} | {eta}")


def _uploaded(snap: dict, elapsed: float) -> str:
    sent = snap.get("bytes_uploaded", 0)
    if not sent:
        return ""
    return f" | uploaded {sent / 1e6:.0f} MB at {sent / 1e6 / elapsed:.1f} MB/s"


class ProgressPrinter:
    """Renders PROGRESS from a daemon thread while the job runs in this process."""

    def __init__(self, rows_total: Optional[int], rate_per_minute: Optional[float], stream: TextIO = None):
        self._rows_total = rows_total
        self._rate = rate_per_minute
        self._stream = stream or sys.stderr
        self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def _line(self) -> str:
        return format_progress(PROGRESS.snapshot(), self._rows_total, self._rate)

    def _loop(self) -> None:
        interval = _TTY_INTERVAL_SEC if self._tty else _PLAIN_INTERVAL_SEC
        while not self._stop.wait(interval):
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        line = self._line()
        if self._tty:
            self._stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self._stream.write("progress: " + line + "\n")
        self._stream.flush()

    def __enter__(self) -> "ProgressPrinter":
        PROGRESS.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._emit(final=True)
