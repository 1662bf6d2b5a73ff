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


def cpu_flag_set() -> set[str]:
    ci = _cpuinfo()
    return set((ci.get("flags") or ci.get("Features") or "").split())


def int8_isa(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The instruction-set class that decides int8 speed and, on x86, whether int8 products saturate.

    x86 without VNNI multiplies unsigned by signed 8-bit values and adds pairs in 16 bits
    (``vpmaddubsw``), which saturates unless weights use 7 bits; VNNI and AMX accumulate in
    32 bits. On arm64 the dot-product extension (``asimddp``) and i8mm decide the int8 kernels.
    """
    flags = cpu_flag_set() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if "amx_int8" in flags:
            return "amx"
        if "avx512_vnni" in flags:
            return "avx512vnni"
        if "avx_vnni" in flags:
            return "avxvnni"
        if "avx2" in flags:
            return "avx2"
        return "sse"
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "neon-i8mm"
        if "asimddp" in flags:
            return "neon-dotprod"
        return "neon"
    return "unknown"


INT8_ISA_NOTES = {
    "amx": "AMX tiles and AVX-512 VNNI: 32-bit int8 accumulation",
    "avx512vnni": "AVX-512 VNNI: 32-bit int8 accumulation",
    "avxvnni": "AVX-VNNI: 32-bit int8 accumulation",
    "avx2": "AVX2 without VNNI: u8 x s8 pairs add in 16 bits and saturate unless weights use 7 bits",
    "sse": "no AVX2: slow int8 kernels",
    "neon-i8mm": "arm64 NEON with dot product and i8mm",
    "neon-dotprod": "arm64 NEON with dot product (sdot/udot)",
    "neon": "arm64 NEON without dot product",
    "unknown": "unknown instruction set",
}


def emulated() -> str | None:
    """How this machine is emulated (e.g. "qemu-user cortex-a76"), or None for real hardware.

    Set by the emulated arm64 board (tools/board_arm64.sh) in EDGECXR_EMULATED: its latency says
    nothing about a real board's, and bench and report keep its records apart.
    """
    return os.environ.get("EDGECXR_EMULATED") or None


def default_device_name() -> str:
    """machine-cpu-cores-isa: records from an AVX2-only and a VNNI machine of one CPU family stay apart."""
    model = re.sub(r"[^a-z0-9]+", "-", cpu_model().split(" (emulated")[0].lower()).strip("-")
    model = re.sub(r"-(processor|cpu|with-radeon-graphics)$", "", model)[:40].strip("-")
    name = f"{platform.machine().lower()}-{model}-{cores()}c-{int8_isa()}"
    return f"{name}-emulated" if emulated() else name


def device_facts() -> dict[str, Any]:
    flags = cpu_flag_set()
    isa = int8_isa(flags)
    return {
        "hostname": socket.gethostname(),
        "board": board_model(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": cores(),
        "cpu_flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "int8_isa": isa,
        "int8_isa_note": INT8_ISA_NOTES[isa],
        "mem_total_mb": mem_total_mb(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "emulated": emulated(),
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
