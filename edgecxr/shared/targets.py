"""Board profiles from ``targets/*.toml`` (device side).

A profile names the backend, default precision, threads, input size,
architecture, runtime package and version, backend options and how to install
on the board.  Adding a board is adding a file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.runtimes import RUNTIMES, get_runtime

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BACKENDS = tuple(RUNTIMES)


@dataclass
class Target:
    name: str
    backend: str
    precision: str
    threads: int
    input_size: int
    arch: str
    description: str = ""
    aliases: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=lambda: ["int8", "fp32"])
    runtime: dict[str, Any] = field(default_factory=dict)
    install: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    quant: str = ""  # int8 recipe name (edgecxr.host.export.recipes); empty: the backend's default
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "path"}


def targets_dir() -> Path:
    env = os.environ.get("EDGECXR_TARGETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parents[1] / "targets", here / "targets_data", Path.cwd() / "targets"):  # repo: edgecxr/shared/..
        if cand.is_dir():
            return cand
    raise EdgeCXRError("no targets/ folder found; set EDGECXR_TARGETS to the folder of board profiles")


def load_target_file(path: Path) -> Target:
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EdgeCXRError(f"invalid target profile ({e})", path) from None
    missing = [k for k in ("name", "backend", "precision", "threads", "input_size", "arch") if k not in d]
    if missing:
        raise EdgeCXRError(f"target profile lacks {', '.join(missing)}", path)
    rt = get_runtime(d["backend"], path)
    known = set(Target.__dataclass_fields__) - {"path"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise EdgeCXRError(f"unknown key(s) {', '.join(unknown)} (a profile may set: {', '.join(sorted(known))})", path)
    opts = d.get("options") or {}
    if not isinstance(opts, dict):
        raise EdgeCXRError("[options] must be a table", path)
    bad = sorted(set(opts) - set(rt.options))
    if bad:
        allowed = ", ".join(rt.options) or "none"
        raise EdgeCXRError(f"option(s) {', '.join(bad)} are not read by the {rt.name} backend (it reads: {allowed})", path)
    prec = d.get("precisions", ["int8", "fp32"])
    if not isinstance(prec, list) or not set(prec) <= {"int8", "fp32"} or d["precision"] not in prec:
        raise EdgeCXRError(f"precision {d['precision']!r} / precisions {prec!r}: use int8 and/or fp32, the default among them", path)
    for k, typ in (("threads", int), ("input_size", int)):
        if not isinstance(d[k], typ) or isinstance(d[k], bool) or d[k] < 0:
            raise EdgeCXRError(f"{k} must be a non-negative integer, not {d[k]!r}", path)
    return Target(**{k: v for k, v in d.items() if k in known}, path=str(path))


def all_targets(folder: Path | None = None) -> dict[str, Target]:
    folder = folder or targets_dir()
    out: dict[str, Target] = {}
    for p in sorted(folder.glob("*.toml")):
        t = load_target_file(p)
        out[t.name] = t
    return out


def get_target(name: str, folder: Path | None = None) -> Target:
    ts = all_targets(folder)
    key = name.lower()
    if key in ts:
        return ts[key]
    for t in ts.values():
        if key in [a.lower() for a in t.aliases]:
            return t
    names = ", ".join(sorted(list(ts) + [a for t in ts.values() for a in t.aliases]))
    raise EdgeCXRError(f"unknown target {name!r}; known targets: {names}")
