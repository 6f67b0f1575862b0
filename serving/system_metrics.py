"""Triton's CPU and GPU metrics, sampled every `--metrics-interval-ms` on a background thread.

- CPU (Linux, from /proc as Triton reads it): `nv_cpu_utilization` (busy share of all cores
  since the previous sample: user+nice+system+irq+softirq+steal over that plus idle+iowait),
  `nv_cpu_memory_total_bytes`, `nv_cpu_memory_used_bytes` (MemTotal - MemAvailable).
- GPU, when the server runs on CUDA, through NVML (`nvidia-ml-py`; Triton uses DCGM, which reads
  the same counters): `nv_gpu_utilization` (0.0-1.0), `nv_gpu_memory_total_bytes`,
  `nv_gpu_memory_used_bytes`, `nv_gpu_power_usage` and `nv_gpu_power_limit` (W),
  `nv_energy_consumption` (J since the server started), each labelled `gpu_uuid`, for the GPUs
  CUDA_VISIBLE_DEVICES leaves visible. A machine without a driver has none of them (logged once).

A sample that cannot be read (a transient /proc error) leaves the CPU figures out of that scrape
and logs one warning; the next interval tries again, and the figures come back with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CPU_METRICS", "GPU_METRICS", "SystemMetrics", "cpu_busy_idle", "memory_bytes"]

log = logging.getLogger(__name__)

# (name, Triton's help text)
CPU_METRICS = (
    ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]"),
    ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes"),
    ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes"),
)
GPU_METRICS = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
    ("nv_gpu_power_usage", "GPU power usage in watts"),
    ("nv_gpu_power_limit", "GPU power management limit in watts"),
    ("nv_energy_consumption", "GPU energy consumption in joules since the Triton Server started"),
)


def cpu_busy_idle(stat: str) -> tuple[int, int]:
    """(busy, idle) jiffies of the aggregate `cpu` line of /proc/stat, as Triton counts them."""
    first = stat.splitlines()[0].split()
    if first[0] != "cpu":
        raise ValueError("no aggregate cpu line in /proc/stat")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return user + nice + system + irq + softirq + steal, idle + iowait


def memory_bytes(meminfo: str) -> tuple[int, int]:
    """(total, used) bytes from /proc/meminfo: used = MemTotal - MemAvailable."""
    values = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[name] = int(parts[0]) * 1024
    total = values["MemTotal"]
    return total, total - values["MemAvailable"]


@dataclass
class GpuSample:
    uuid: str
    values: dict[str, float]


class SystemMetrics:
    """Samples CPU (and, with `gpu`, GPU) figures every `interval_s` on a daemon thread.

    `proc` is where /proc is (another folder with `stat` and `meminfo` in the same format will
    do); without those files (not Linux) there are no CPU figures.
    """

    def __init__(
        self, interval_s: float = 2.0, *, gpu: bool = False, proc: Path = Path("/proc")
    ) -> None:
        self.cpu: dict[str, float] = {}
        self.gpus: list[GpuSample] = []
        self.cpu_read_errors = 0
        self._interval = interval_s
        self._proc = proc
        self._cpu_ok = (self._proc / "stat").is_file() and (self._proc / "meminfo").is_file()
        self._cpu_failing = False
        self._previous: tuple[int, int] | None = None
        self._nvml: Any = None
        self._handles: list[tuple[str, Any, float]] = []  # (uuid, handle, energy at start, mJ)
        if gpu:
            self._start_nvml()
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        if self._cpu_ok:
            try:
                self._sample_cpu()
            except (OSError, ValueError, KeyError, IndexError) as err:
                self.cpu_read_errors += 1
                self.cpu, self._previous = {}, None  # this interval has no figures
                if not self._cpu_failing:
                    self._cpu_failing = True
                    log.warning(
                        "CPU metrics: cannot read %s (%s); trying again every %gs",
                        self._proc,
                        err,
                        self._interval,
                    )
            else:
                if self._cpu_failing:
                    self._cpu_failing = False
                    log.info("CPU metrics: %s can be read again", self._proc)
        if self._handles:
            self.gpus = [self._sample_gpu(*entry) for entry in self._handles]

    def _sample_cpu(self) -> None:
        busy, idle = cpu_busy_idle((self._proc / "stat").read_text())
        total, used = memory_bytes((self._proc / "meminfo").read_text())
        cpu: dict[str, float] = {
            "nv_cpu_memory_total_bytes": total,
            "nv_cpu_memory_used_bytes": used,
        }
        if self._previous is not None:
            d_busy = max(0, busy - self._previous[0])
            d_idle = max(0, idle - self._previous[1])
            cpu["nv_cpu_utilization"] = d_busy / (d_busy + d_idle) if d_busy + d_idle else 0.0
        elif "nv_cpu_utilization" in self.cpu:
            cpu["nv_cpu_utilization"] = self.cpu["nv_cpu_utilization"]
        else:
            cpu["nv_cpu_utilization"] = 0.0
        self._previous = (busy, idle)
        self.cpu = cpu

    # -- GPU ----------------------------------------------------------------------------------

    def _start_nvml(self) -> None:
        try:
            import pynvml  # the nvidia-ml-py package

            pynvml.nvmlInit()
        except Exception as err:  # no driver, no library: no GPU metrics
            log.info("GPU metrics are off: NVML is not usable here (%s)", err)
            return
        self._nvml = pynvml
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            if not _visible(index, uuid):
                continue
            try:
                energy = float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except pynvml.NVMLError:
                energy = float("nan")
            self._handles.append((uuid, handle, energy))
        log.info("GPU metrics for %s", ", ".join(u for u, _, _ in self._handles) or "no GPU")

    def _sample_gpu(self, uuid: str, handle: Any, energy_start_mj: float) -> GpuSample:
        nvml, values = self._nvml, {}
        readings: tuple[tuple[str, Callable[[], float]], ...] = (
            ("nv_gpu_utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100),
            ("nv_gpu_memory_total_bytes", lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total),
            ("nv_gpu_memory_used_bytes", lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used),
            ("nv_gpu_power_usage", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000),
            ("nv_gpu_power_limit", lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000),
            (
                "nv_energy_consumption",
                lambda: (nvml.nvmlDeviceGetTotalEnergyConsumption(handle) - energy_start_mj) / 1000,
            ),
        )
        for name, read in readings:
            try:
                values[name] = float(read())
            except nvml.NVMLError:  # e.g. no power readings on this board: leave it out
                continue
        return GpuSample(uuid, values)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _visible(index: int, uuid: str) -> bool:
    """Whether CUDA_VISIBLE_DEVICES (indices or UUID prefixes) leaves this GPU visible."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return True
    for item in (v.strip() for v in visible.split(",")):
        if item.isdigit() and int(item) == index:
            return True
        if item.startswith("GPU-") and uuid.startswith(item):
            return True
    return False
