"""What a benchmark ran on (device side, no torch)."""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
from pathlib import Path
from typing import Any

INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                     "avx_vnni", "asimd", "asimddp", "i8mm", "bf16", "sve")


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def cpu_model() -> str:
    ci = _cpuinfo()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if ci.get(key):
            return ci[key]
    try:
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
        if model:
            return model
    except OSError:
        pass
    return platform.processor() or platform.machine()


def board_model() -> str | None:
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            return Path(p).read_text().strip("\x00\n ")
        except OSError:
            continue
    try:
        return Path("/sys/class/dmi/id/product_name").read_text().strip() or None
    except OSError:
        return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mem_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def default_device_name() -> str:
    model = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    model = re.sub(r"-(processor|cpu|with-radeon-graphics)$", "", model)[:40].strip("-")
    return f"{platform.machine().lower()}-{model}-{cores()}c"


def device_facts() -> dict[str, Any]:
    ci = _cpuinfo()
    flags = set((ci.get("flags") or ci.get("Features") or "").split())
    return {
        "hostname": socket.gethostname(),
        "board": board_model(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": cores(),
        "cpu_flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "mem_total_mb": mem_total_mb(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }


def rss_mb() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
