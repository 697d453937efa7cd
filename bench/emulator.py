"""The emulator in its own process (`python -m embed_emulator`), so its CPU never counts as the
client's, plus the two control calls the benchmark needs: reset between arms, and stats."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EmulatorProcess:
    def __init__(self, rpm: Optional[int] = None, latency_ms: float = 0.0, jitter_ms: float = 0.0):
        self.args = ["--port", "0", "--seed", "1", "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms)]
        if rpm:
            self.args += ["--rpm", str(rpm)]
        self.proc: Optional[subprocess.Popen] = None
        self.base_url = ""

    def __enter__(self) -> "EmulatorProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "embed_emulator", *self.args], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
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

    def _control(self, method: str, path: str) -> dict:
        root = self.base_url.rsplit("/v1.3", 1)[0]
        request = urllib.request.Request(root + path, method=method, data=b"{}" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        """Zeroes the counters and the rate-limit windows: each arm starts on a fresh minute."""
        self._control("POST", "/emulator/reset")

    def stats(self) -> dict:
        return self._control("GET", "/emulator/stats")

    def cpu_sec(self) -> float:
        """The emulator's own CPU so far (user + system, from /proc), to see what it takes from the client."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
