"""Power, temperature and load, sampled in a background thread from the best source this machine has:

  jtop     jetson-stats on a Jetson: board power (total of the INA3221 rails, W), temperatures, CPU/GPU load
  nvml     a desktop NVIDIA GPU through nvidia-ml-py: GPU power (W), temperature, utilisation
  system   everything else: psutil CPU load and resident memory, /sys/class/thermal temperatures, no power

A sampler keeps only its latest sample (constant memory), and frames read it: a frame's energy is the
latest power times its pipeline time, so it is as fine as the sampling interval, which every report states.
"""
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.core.lazy import have, lazy_import

THERMAL = Path("/sys/class/thermal")


@dataclass
class Sample:
    time: float = 0.0
    power_w: float = None        # None: no power sensor here
    temp_c: float = None         # the hottest zone
    cpu_percent: float = None
    rss_mb: float = None
    extra: dict = field(default_factory=dict)


def thermal_zones() -> float:
    """The hottest /sys/class/thermal zone in deg C, None when there is none."""
    temps = []
    for zone in THERMAL.glob("thermal_zone*/temp"):
        try:
            temps.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


class SystemReader:
    name = "system"
    needs = ("psutil",)     # the packages a reader imports: one missing, best_reader skips it

    def __init__(self):
        psutil = lazy_import("psutil", extra="runtime", why="telemetry")
        self.psutil, self.proc = psutil, psutil.Process()
        self.psutil.cpu_percent(None)   # the first call only starts the measurement

    def read(self) -> Sample:
        return Sample(time.time(), None, thermal_zones(), self.psutil.cpu_percent(None),
                      self.proc.memory_info().rss / 2 ** 20)


class NvmlReader(SystemReader):
    name = "nvml"
    needs = ("pynvml", "psutil")

    def __init__(self):
        pynvml = lazy_import("pynvml", why="NVML telemetry (pip install nvidia-ml-py)")
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            raise RuntimeError("no NVIDIA GPU")
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        super().__init__()

    def read(self) -> Sample:
        s = super().read()
        s.power_w = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0   # mW
        s.temp_c = float(self.nvml.nvmlDeviceGetTemperature(self.handle, self.nvml.NVML_TEMPERATURE_GPU))
        s.extra["gpu_percent"] = float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        return s


class JtopReader(SystemReader):
    name = "jtop"
    needs = ("jtop", "psutil")

    def __init__(self):
        jtop = lazy_import("jtop", extra="jetson", why="Jetson telemetry")
        self.jetson = jtop.jtop()
        self.jetson.start()
        super().__init__()

    def read(self) -> Sample:
        s = super().read()
        power = self.jetson.power or {}
        total = power.get("tot", {}) if isinstance(power, dict) else {}
        if "power" in total:
            s.power_w = total["power"] / 1000.0     # mW
        temps = [t.get("temp") for t in (self.jetson.temperature or {}).values()
                 if isinstance(t, dict) and isinstance(t.get("temp"), (int, float)) and t.get("temp") > -200]
        if temps:
            s.temp_c = max(temps)
        return s

    def close(self):
        self.jetson.close()


def best_reader(prefer: str = "auto"):
    """The first reader that starts: jtop, then NVML, then the system reader (None without psutil)."""
    order = {"auto": (JtopReader, NvmlReader, SystemReader), "jtop": (JtopReader,), "nvml": (NvmlReader,),
             "system": (SystemReader,)}[prefer]
    for cls in order:
        if not all(have(name) for name in cls.needs):
            continue
        try:
            return cls()
        except Exception:   # no device, no jtop service, a driver's own error type: try the next source
            continue
    return None


class Telemetry:
    """A daemon thread sampling `reader` every `interval` seconds; `latest` is the newest Sample."""

    def __init__(self, interval: float = 0.5, prefer: str = "auto"):
        self.interval = interval
        self.reader = best_reader(prefer)
        self.source = self.reader.name if self.reader else "none"
        self.latest = Sample()
        self._stop = threading.Event()
        self._thread = None
        self.energy_j = 0.0      # integrated over samples, for the run's total

    def start(self) -> "Telemetry":
        if self.reader is not None:
            self.latest = self.reader.read()
            self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                s = self.reader.read()
            except Exception:   # a sensor that goes away mid-run: keep the last sample
                continue
            if s.power_w is not None and self.latest.power_w is not None:
                self.energy_j += self.latest.power_w * (s.time - self.latest.time)
            self.latest = s

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)
        if hasattr(self.reader, "close"):
            self.reader.close()

    def describe(self) -> str:
        if self.reader is None:
            return "telemetry: none (install psutil, or jetson-stats on a Jetson)"
        power = "power from " + self.source if self.source in ("jtop", "nvml") else "no power sensor"
        return f"telemetry: {self.source}, sampled every {self.interval * 1000:.0f} ms, {power}"
