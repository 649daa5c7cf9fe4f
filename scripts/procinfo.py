"""Facts about a local server process and the machine, read from /proc (Linux): the pid listening on a
port, its threads, its resident memory (sampled on a thread while a load runs), and the CPU's model and
the instruction-set flags that matter to a CPU inference engine.

Shared by `scripts/bench.py`, `scripts/scale.py` and `scripts/soak.py`.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def listening_pid(port: int) -> int | None:
    """The pid of the process (readable by this user) that listens on TCP `port`, from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def local_pid(url: str, given: int | None = None) -> int | None:
    """The pid of the server at `url`: as given, else the local process listening on its port."""
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port is not None
    return given or (listening_pid(parts.port) if local and parts.port else None)


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_names(pid: int) -> Counter[str]:
    """The process's threads by name (`comm`), to tell which kind grew."""
    names: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:
            continue
    return names


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def rss_mib(pid: int) -> float:
    """Resident set size now (VmRSS), MiB."""
    return _status_mib(pid, "VmRSS")


def hwm_mib(pid: int) -> float:
    """The highest resident set size since the process started (VmHWM), MiB."""
    return _status_mib(pid, "VmHWM")


def cpu_info() -> dict[str, object]:
    """The CPU model name, the logical cores, and which of `CPU_FLAGS` the CPU advertises."""
    model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS}}


def cpu_line(info: dict[str, object]) -> str:
    """One line for a report: `CPU: AMD EPYC, 2 cores; avx2 avx512f ...; without amx_tile ...`."""
    flags = info["flags"]
    assert isinstance(flags, dict)
    have = " ".join(f for f, on in flags.items() if on) or "none"
    lack = " ".join(f for f, on in flags.items() if not on) or "none"
    return f"CPU: {info['model']}, {info['cores']} cores; flags: {have}; without: {lack}"


# ---------------------------------------------------------------- RSS over time


@dataclass(frozen=True)
class RssSample:
    t: float  # seconds since the sampler started
    rss_mib: float
    done: int  # requests finished by then


class RssSampler:
    """Samples a process's RSS every `interval` seconds on a daemon thread while the `with` block runs,
    plus once on entry and once on exit; `progress()` tells how many requests have finished so far.
    Stops quietly when the process is gone."""

    def __init__(self, pid: int, interval: float = 1.0, progress: Callable[[], int] = lambda: 0) -> None:
        self.pid = pid
        self.interval = interval
        self.progress = progress
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._start = 0.0

    def _sample(self) -> None:
        try:
            rss = rss_mib(self.pid)
        except (OSError, RuntimeError):
            self._stop.set()
            return
        self.samples.append(RssSample(time.monotonic() - self._start, rss, self.progress()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._start = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self._stop.clear()
            self._sample()


@dataclass(frozen=True)
class RssTrend:
    """A straight line fitted to RSS against finished requests, over the samples after a warm-up."""

    slope_per_100: float  # MiB per 100 finished requests
    growth_mib: float  # the fitted growth over the window
    base_mib: float  # RSS at the start of the window
    requests: int  # requests finished within the window
    samples: int

    def flat(self, tolerance_pct: float) -> bool:
        return self.growth_mib <= self.base_mib * tolerance_pct / 100


def rss_trend(samples: Sequence[RssSample], warm_up: float) -> RssTrend | None:
    """The trend of the samples taken after `warm_up` seconds; None when they are too few to fit."""
    window = [s for s in samples if s.t >= warm_up]
    if len(window) < 3 or window[-1].done == window[0].done:
        return None
    done = [float(s.done) for s in window]
    rss = [s.rss_mib for s in window]
    slope, _ = statistics.linear_regression(done, rss)
    span = window[-1].done - window[0].done
    return RssTrend(slope * 100, slope * span, window[0].rss_mib, span, len(window))
