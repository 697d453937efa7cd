"""The emulator in its own process (`python -m embed_emulator`), so its CPU never counts as the
client's, plus the control calls the benchmark needs: reset between arms, stats, knobs changed at run
time (`/emulator/config`), and a sampler of its answered requests over an arm's run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EmulatorProcess:
    """`asset_knobs`: the emulator's asset options by their CLI names without dashes (asset_chunk_size,
    asset_processing_sec, asset_initial_urls, chunk_put_delay_ms, asset_storage_dir, ...); `quiet`: its stderr
    discarded (a client killed mid-PUT makes its HTTP server print a traceback per cut connection)."""

    def __init__(self, rpm: Optional[int] = None, latency_ms: float = 0.0, jitter_ms: float = 0.0,
                 quiet: bool = False, **asset_knobs):
        self.quiet = quiet
        self.args = ["--port", "0", "--seed", "1", "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms)]
        if rpm:
            self.args += ["--rpm", str(rpm)]
        for name, value in asset_knobs.items():
            if value is not None:
                self.args += ["--" + name.replace("_", "-"), str(value)]
        self.proc: Optional[subprocess.Popen] = None
        self.base_url = ""

    def __enter__(self) -> "EmulatorProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "embed_emulator", *self.args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if self.quiet else None,
                                     text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("EMULATOR_URL="):
            self.__exit__()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.base_url = line.split("=", 1)[1]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def _control(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        root = self.base_url.rsplit("/v1.3", 1)[0]
        data = json.dumps(body or {}).encode("utf-8") if method == "POST" else None
        request = urllib.request.Request(root + path, method=method, data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def configure(self, **changes) -> dict:
        """Changes knobs of the running emulator (POST /emulator/config); returns its whole config."""
        return self._control("POST", "/emulator/config", changes)

    def reset(self) -> None:
        """Zeroes the counters and the rate-limit windows: each arm starts on a fresh minute."""
        self._control("POST", "/emulator/reset")

    def stats(self) -> dict:
        return self._control("GET", "/emulator/stats")

    def delete_asset(self, asset_id: str) -> None:
        """DELETE /assets/{id}: frees the emulator's copy of the bytes (an uploaded GB stays on disk otherwise)."""
        request = urllib.request.Request(f"{self.base_url}/assets/{asset_id}", method="DELETE",
                                         headers={"x-api-key": os.environ.get("TWELVE_LABS_API_KEY", "bench-key")})
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def cpu_sec(self) -> float:
        """The emulator's own CPU so far (user + system, from /proc), to see what it takes from the client."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RequestSampler:
    """Samples the emulator's answered requests (429s excluded) every `interval` s in a thread, so a run's
    wall time splits into phases. Reading /emulator/stats is not an API request: it counts against no limit.
    Samples are (time, embed POSTs, task polls); `refused` holds (time, 429s so far) at the same times."""

    def __init__(self, emu: EmulatorProcess, interval: float = 0.2):
        self.emu, self.interval = emu, interval
        self.samples: List[Tuple[float, int, int]] = []
        self.refused: List[Tuple[float, int]] = []
        self.first_request_at: Optional[float] = None  # the emulator's own clock: exact, not sampled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self.emu.stats()
            except OSError:
                stats = None
            if stats is not None:
                limited = stats["rate_limited"] + stats["faults"].get("429_burst", 0)
                polls = stats.get("tasks", {}).get("polled", 0)
                now = time.time()
                self.samples.append((now, stats["requests"] - limited - polls, polls))
                self.refused.append((now, limited))
                self.first_request_at = stats.get("first_request_at") or self.first_request_at
            self._stop.wait(self.interval)

    def __enter__(self) -> "RequestSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def count_at(self, when: float) -> float:
        """Answered requests (calls + polls) at `when`, interpolated between samples."""
        before = [(t, c + p) for t, c, p in self.samples if t <= when]
        after = [(t, c + p) for t, c, p in self.samples if t > when]
        if not before:
            return 0.0
        if not after:
            return float(before[-1][1])
        (t0, n0), (t1, n1) = before[-1], after[0]
        return n0 + (n1 - n0) * (when - t0) / (t1 - t0)

    def _last_move(self, value) -> Optional[float]:
        """When `value(sample)` last changed: the midpoint of the two samples around it."""
        s = self.samples
        moves = [i for i in range(1, len(s)) if value(s[i]) != value(s[i - 1])]
        return (s[moves[-1] - 1][0] + s[moves[-1]][0]) / 2.0 if moves else None

    def phases(self, started_at: float, ended_at: float) -> dict:
        """Each to within the sampling interval: start-up (the arm's start to its first request: exact when the
        emulator reports when that came), calls (first answer to the last embed POST answered), task wait (from
        there to the last poll: only polls of the last tasks are left), tail (last answer to the arm's end); the
        rate of calls + polls over the active span (first to last answer) and over its middle 80% (the steady
        pace)."""
        s = self.samples
        total = [c + p for _, c, p in s]
        moves = [i for i in range(1, len(s)) if total[i] != total[i - 1]]
        if not moves:
            return {}
        first_at = (s[moves[0] - 1][0] + s[moves[0]][0]) / 2.0 if total[moves[0] - 1] == 0 else s[0][0]
        last_at = self._last_move(lambda x: x[1] + x[2])
        last_call_at = self._last_move(lambda x: x[1]) or first_at
        active = max(last_at - first_at, 1e-9)
        lo, hi = first_at + 0.1 * active, first_at + 0.9 * active
        # Start-up is exact where the emulator says when its first request came (same machine, same clock).
        startup = (self.first_request_at if self.first_request_at is not None else first_at) - started_at
        return {"startup_sec": max(0.0, startup), "active_sec": active,
                "calls_sec": max(0.0, last_call_at - first_at), "task_wait_sec": max(0.0, last_at - last_call_at),
                "tail_sec": max(0.0, ended_at - last_at), "active_requests": total[moves[-1]],
                "active_rate": total[moves[-1]] / active,
                "steady_rate": (self.count_at(hi) - self.count_at(lo)) / (hi - lo) if hi > lo else None,
                "sample_sec": self.interval}

    def pace(self, started_at: float, ended_at: float, bin_sec: float = 10.0, window_sec: float = 60.0) -> dict:
        """The pace of answered requests over time, for a run under a sliding-window limit: the count in the
        last `window_sec` before the last answer, the counts per `bin_sec` from the first answer (whole bins
        only), and when the 429s came (seconds after the first answer, to within the sampling interval)."""
        phases = self.phases(started_at, ended_at)
        if not phases:
            return {}
        last_at = self._last_move(lambda x: x[1] + x[2])
        first_at = last_at - phases["active_sec"]
        bins, t = [], first_at
        while t + bin_sec <= last_at + 1e-9:
            bins.append(self.count_at(t + bin_sec) - self.count_at(t))
            t += bin_sec
        moves = [i for i in range(1, len(self.refused)) if self.refused[i][1] != self.refused[i - 1][1]]
        refused_at = [(self.refused[i][0] - first_at, self.refused[i][1] - self.refused[i - 1][1]) for i in moves]
        if self.refused and self.refused[0][1]:
            refused_at.insert(0, (self.refused[0][0] - first_at, self.refused[0][1]))
        window = min(window_sec, phases["active_sec"])
        return dict(phases, first_at=first_at, last_at=last_at, bin_sec=bin_sec, bins=bins,
                    last_window_sec=window, last_window_count=phases["active_requests"] - self.count_at(last_at - window),
                    refused_at=refused_at)
