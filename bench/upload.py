"""The `upload` scenario (issue 23): large media files uploaded as assets, our Uploader against the SDK's helper.

- `make_wav`: a real 44-byte PCM WAV header (48 kHz stereo 16-bit, its data chunk as long as the file) and
  noise written in 8 MiB blocks: a file of any size in seconds, which the emulator's asset check decodes.
- `bench.benchfs`: the `benchfs://` Beam FileSystem the job arm reads a "non-local" file through (imported
  only there: this module imports no Beam, so the SDK arm's RSS carries none).
- `run_upload_job` / `run_upload_sdk`: the two arms' work (`python -m bench.arm upload-job|upload-sdk`).
- `ArmProcess`: runs an arm as a subprocess while sampling folders (the SDK's chunk files) and, when asked,
  SIGKILLs it once the emulator has accepted a given number of chunk bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from typing import Dict, Optional, Sequence

MIB = 1024 * 1024
KEY = os.environ.get("TWELVE_LABS_API_KEY", "bench-key")


# ---- test files ---------------------------------------------------------------------------------------------

def make_wav(path: str, size: int, block: int = 8 * MIB) -> str:
    """A WAV of exactly `size` bytes (a multiple of 4 past the header): PCM 48 kHz stereo 16-bit, noise."""
    data = size - 44
    if data <= 0 or data % 4:
        raise ValueError(f"a WAV of {size} bytes has no whole stereo frames")
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    header = b"RIFF" + struct.pack("<I", size - 8) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 2, 48000, 48000 * 4, 4, 16) + b"data" + struct.pack("<I", data)
    noise = os.urandom(block)
    with open(path + ".tmp", "wb") as f:
        f.write(header)
        left = data
        while left:
            n = min(left, block)
            f.write(noise[:n] if n < block else noise)
            left -= n
    os.replace(path + ".tmp", path)
    return path


def dir_bytes(folder: str) -> int:
    """Bytes of the files directly in `folder` (0 when it does not exist)."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    except OSError:
        return 0
    return total


def sdk_chunk_dir(path: str) -> str:
    """Where twelvelabs 1.3.6's `upload_file` writes its chunk copies: `<file's folder>/<stem>_chunks`."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, os.path.splitext(name)[0] + "_chunks")


# ---- the arms' work ---------------------------------------------------------------------------------------

def proc_io() -> Dict[str, int]:
    """This process's /proc/self/io counters (write_bytes: bytes it sent, or will send, to the disk)."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}
    except OSError:
        return {}


def run_upload_job(path: str, base_url: str, parallel: int, via: str = "local", output: Optional[str] = None,
                   extra: Optional[dict] = None) -> int:
    """Our Uploader on one file, as the job runs it: the job's validate step first (`row_to_items` on a row
    naming the file with assets.upload: always: the header probed and the sha256 streamed through FileSystems),
    then `Uploader.ensure` of the item it gives (multipart: direct_upload_max_bytes 0).
    `via` "benchfs" reads the file as benchfs://; `output` journals to OUTPUT/assets/ (a rerun resumes).
    `extra` gets the timings (hash, upload, ready wait), the asset's final status and the Uploader's counts."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.calling.upload import AssetFailed, Uploader
    from transforms.records import ManifestRow
    from transforms.settings import CallSettings, make_client
    from transforms.stages.validate import RoutePlan, row_to_items
    from transforms.store.assets import AssetJournal, read_asset_journal

    local = os.path.abspath(path)
    if via == "benchfs":
        from bench.benchfs import SCHEME  # registers the FileSystem
        file_path = f"{SCHEME}://{local}"
    else:
        file_path = local
    size = FileSystems.match([file_path])[0].metadata_list[0].size_in_bytes
    t0 = time.perf_counter()
    (item,) = row_to_items(ManifestRow("bench.jsonl", 1, {"id": "big", "audio_file": file_path}), "marengo3.0",
                           RoutePlan("marengo3.0", asset_upload="always"))
    hash_sec = time.perf_counter() - t0
    if not getattr(item, "upload", False):
        raise SystemExit(f"validation did not route {file_path} to an upload: {item}")
    settings = CallSettings(base_url=base_url, model="marengo3.0", direct_upload_max_bytes=0,
                            max_parallel_chunks=parallel, asset_poll_sec=0.05, asset_ready_timeout_sec=300)
    uploader = Uploader(settings, make_client(settings), AssetJournal(output, "bench"), read_asset_journal(output))
    io0 = proc_io()
    t1 = time.perf_counter()
    status, error = "ready", None
    try:
        asset_id = uploader.ensure(item)
    except AssetFailed as exc:
        asset_id, status, error = exc.asset_id, "failed", exc.reason
    ensure_sec = time.perf_counter() - t1
    read_bytes = proc_io().get("rchar", 0) - io0.get("rchar", 0)  # read() syscalls: the file's bytes, and replies
    uploader.close()
    counts = uploader.stats.take()
    if extra is not None:
        extra.update(file=file_path, size=size, parallel=parallel, via=via, hash_sec=hash_sec,
                     upload_sec=counts["upload_seconds"], ensure_sec=ensure_sec,
                     ready_wait_sec=ensure_sec - counts["upload_seconds"], status=status, error=error,
                     asset_id=asset_id, upload_read_bytes=read_bytes,
                     uploader={k: v for k, v in counts.items() if k != "upload_seconds"})
    return 1


def _asset_status(base_url: str, asset_id: str, timeout: float = 300.0) -> str:
    """Polls GET /assets/{id} until ready or failed (plain urllib: the SDK arm's clock has stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{base_url}/assets/{asset_id}", headers={"x-api-key": KEY})
        with urllib.request.urlopen(request, timeout=30) as response:
            status = json.loads(response.read()).get("status")
        if status in ("ready", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def run_upload_sdk(path: str, base_url: str, workers: int, extra: Optional[dict] = None) -> int:
    """twelvelabs 1.3.6's `multipart_upload.upload_file(path, file_type="audio", batch_size=10,
    max_workers=workers)`: it splits the whole file into chunk files next to it, then PUTs them 10 at a time
    (`workers` in parallel) and reports each batch. Then (off the clock) waits for the asset's status."""
    from twelvelabs import TwelveLabs

    client = TwelveLabs(api_key=KEY, base_url=base_url)
    size = os.path.getsize(path)
    io0 = proc_io()
    t0 = time.perf_counter()
    result = client.multipart_upload.upload_file(path, file_type="audio", batch_size=10, max_workers=workers)
    upload_sec = time.perf_counter() - t0
    read_bytes = proc_io().get("rchar", 0) - io0.get("rchar", 0)
    t1 = time.perf_counter()
    status = _asset_status(base_url, result.asset_id)
    if extra is not None:
        extra.update(file=path, size=size, parallel=workers, via="local", hash_sec=0.0, upload_sec=upload_sec,
                     ensure_sec=upload_sec, ready_wait_sec=time.perf_counter() - t1, status=status,
                     asset_id=result.asset_id, upload_read_bytes=read_bytes)
    return 1


# ---- running an arm from the bench ----------------------------------------------------------------------------

class ArmProcess:
    """`python -m bench.arm ARM ...` as a subprocess. While it runs, every `interval` s: the largest total size
    seen in `watch` folders (temp disk), and, with `kill_at_bytes`, the emulator's chunk_bytes_accepted: at or
    past it the arm is SIGKILLed. `run()` returns the arm's JSON (None when killed) and sets `temp_peak`,
    `killed_at` (accepted bytes when the kill was sent) and `returncode`."""

    def __init__(self, emu, arm: str, args: Sequence[str], out: str, root: str, watch: Sequence[str] = (),
                 kill_at_bytes: Optional[int] = None, env: Optional[dict] = None, interval: float = 0.05):
        self.emu, self.arm, self.args, self.out, self.root = emu, arm, list(args), out, root
        self.watch, self.kill_at_bytes, self.interval = list(watch), kill_at_bytes, interval
        self.env = env
        self.temp_peak = 0
        self.killed_at: Optional[int] = None
        self.returncode: Optional[int] = None
        self.stderr = ""

    def run(self) -> Optional[dict]:
        if os.path.exists(self.out):
            os.unlink(self.out)
        cmd = [sys.executable, "-m", "bench.arm", self.arm, "--base-url", self.emu.base_url, "--out", self.out,
               *self.args]
        env = dict(self.env or os.environ)
        env.setdefault("TWELVE_LABS_API_KEY", KEY)
        with open(self.out + ".stderr", "w+", encoding="utf-8") as err:
            proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=err)
            while proc.poll() is None:
                self.temp_peak = max(self.temp_peak, sum(dir_bytes(f) for f in self.watch))
                if self.kill_at_bytes is not None:
                    accepted = self.emu.stats()["assets"]["chunk_bytes_accepted"]
                    if accepted >= self.kill_at_bytes:
                        proc.send_signal(signal.SIGKILL)
                        self.killed_at = accepted
                        proc.wait()
                        break
                time.sleep(self.interval)
            self.returncode = proc.wait()
            err.seek(0)
            self.stderr = err.read()
        os.unlink(self.out + ".stderr")
        if self.killed_at is not None:
            return None
        if self.returncode:
            raise SystemExit(f"arm {self.arm} {' '.join(self.args)} failed:\n{self.stderr[-3000:]}")
        with open(self.out, encoding="utf-8") as f:
            return json.load(f)


def remove(*paths: str) -> None:
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.unlink(path)
