"""The settings of ``edgecxr serve``: command-line options over a TOML file over the defaults.

A board that starts the node at boot keeps them in one file (``--config /etc/edgecxr/serve.toml``);
keys are the option names, with ``-`` or ``_``, at the top level or under ``[serve]``::

    bundle = "/opt/edgecxr/bundles/rpi4-int8"
    ae-title = "EDGECXR"
    dicom-port = 11112
    host = "0.0.0.0"              # default 127.0.0.1: loopback unless told otherwise
    pacs = "ORTHANC@10.0.0.5:4242"
    spool = "/var/lib/edgecxr/spool"
    allow-ae = ["ORTHANC", "DX_ROOM1"]
    spool-limit-mb = 2048
    http = "127.0.0.1:8000"       # the HTTP door (OIP, STOW-RS, /metrics, the page); off unless set
    token-file = "/etc/edgecxr/token"
    # dicom-port = 0              # 0: HTTP only, no DICOM door
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgecxr.shared.errors import EdgeCXRError

AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # AE: 16 chars of the default repertoire, no backslash


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def ae_title(s: str, what: str) -> str:
    t = str(s).strip()
    if not AE_RE.match(t) or not t.strip():
        raise EdgeCXRError(f"{what} {s!r} is not a DICOM AE title (1 to 16 printable characters, no backslash)")
    return t


def port(v: Any, what: str) -> int:
    try:
        p = int(v)
    except (TypeError, ValueError):
        raise EdgeCXRError(f"{what} {v!r} is not a port number") from None
    if not 0 < p < 65536:
        raise EdgeCXRError(f"{what} {p} is not a port number (1..65535)")
    return p


def parse_peer(s: str) -> Peer:
    m = re.match(r"^([^@]+)@(.+):(\d+)$", str(s).strip())
    if not m:
        raise EdgeCXRError(f"--pacs {s!r} is not AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
    return Peer(ae_title(m.group(1), "--pacs AE title"), m.group(2).strip("[]"), port(m.group(3), "--pacs port"))


def parse_http(s: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``PORT`` (loopback)."""
    s = str(s).strip()
    host, _, tail = s.rpartition(":")
    if not tail.strip().isdigit():
        raise EdgeCXRError(f"--http {s!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return host.strip("[]") or "127.0.0.1", port(tail, "--http port")


@dataclass
class ServeConfig:
    bundle: Path | None = None
    ae_title: str = "EDGECXR"
    host: str = "127.0.0.1"
    dicom_port: int = 11112
    pacs: Peer | None = None
    spool: Path = Path("spool")
    allow_ae: list[str] = field(default_factory=list)
    spool_limit_mb: float = 1024.0
    allow_unsigned: bool = False
    heatmap: bool = False  # also a Secondary Capture of the occlusion heatmap, "NOT FOR DIAGNOSIS" burned in
    key: list[Path] = field(default_factory=list)  # trusted public keys for this node (else the board's)
    threads: int | None = None
    max_pixels: int | None = None
    results: Path | None = None  # default <spool>/results.jsonl
    keep_done: int = 1000  # read instances kept in <spool>/done
    outbox_retries: int = 5  # attempts per round, with exponential backoff from outbox_backoff_s
    outbox_backoff_s: float = 1.0
    outbox_recheck_s: float = 30.0  # after a failed round: how often the PACS is tried again
    http: str | None = None  # HOST:PORT of the HTTP door (loopback unless a host is given); None: off
    http_max_mb: float = 64.0  # request body limit
    http_queue: int = 16  # inference requests waiting for the worker; over it: 503 with Retry-After
    token_file: Path | None = None  # bearer token for infer, STOW-RS and the page
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def spool_limit_bytes(self) -> int:
        return int(self.spool_limit_mb * 1024 * 1024)


_PATHS = {"bundle", "spool", "results", "token_file", "tls_cert", "tls_key"}


def _coerce(name: str, v: Any) -> Any:
    if v is None:
        return None
    if name in _PATHS:
        return Path(str(v)).expanduser()
    if name == "key":
        return [Path(str(x)).expanduser() for x in (v if isinstance(v, list) else [v])]
    if name == "pacs":
        return v if isinstance(v, Peer) else parse_peer(str(v))
    if name == "ae_title":
        return ae_title(v, "--ae-title")
    if name == "allow_ae":
        return [ae_title(x, "--allow-ae") for x in (v if isinstance(v, list) else [v])]
    if name == "dicom_port":
        return 0 if str(v).strip() == "0" else port(v, "--dicom-port")
    if name == "http":
        parse_http(str(v))
        return str(v).strip()
    if name in ("allow_unsigned", "heatmap"):
        if not isinstance(v, bool):
            raise EdgeCXRError(f"{name.replace('_', '-')} must be true or false")
        return v
    if name in ("threads", "max_pixels", "keep_done", "outbox_retries", "http_queue"):
        try:
            i = int(v)
        except (TypeError, ValueError):
            raise EdgeCXRError(f"{name.replace('_', '-')} {v!r} is not a whole number") from None
        if i < (1 if name != "keep_done" else 1):
            raise EdgeCXRError(f"{name.replace('_', '-')} must be at least 1")
        return i
    if name in ("spool_limit_mb", "outbox_backoff_s", "outbox_recheck_s", "http_max_mb"):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise EdgeCXRError(f"{name.replace('_', '-')} {v!r} is not a number") from None
        if not f > 0:
            raise EdgeCXRError(f"{name.replace('_', '-')} must be positive")
        return f
    return str(v)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        raise EdgeCXRError("a --config file needs Python 3.11 or later (tomllib)") from None
    if not path.is_file():
        raise EdgeCXRError("config file not found", path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgeCXRError(f"config file is not valid TOML ({str(e).splitlines()[0][:120]})", path) from None
    if isinstance(data.get("serve"), dict):
        data = {**{k: v for k, v in data.items() if k != "serve"}, **data["serve"]}
    known = {f.name for f in fields(ServeConfig)}
    out = {}
    for k, v in data.items():
        n = k.replace("-", "_")
        if n not in known:
            raise EdgeCXRError(f"config file has unknown setting {k!r} (known: "
                               f"{', '.join(sorted(x.replace('_', '-') for x in known))})", path)
        out[n] = v
    return out


def load(config: Path | None, **options: Any) -> ServeConfig:
    """Defaults, then the config file, then every option that was given (not None / not empty)."""
    merged: dict[str, Any] = read_toml(config) if config else {}
    for k, v in options.items():
        if v is None or (isinstance(v, (list, tuple)) and not v) or (k in ("allow_unsigned", "heatmap") and v is False):
            continue
        merged[k] = list(v) if isinstance(v, tuple) else v
    cfg = ServeConfig()
    for k, v in merged.items():
        c = _coerce(k, v)
        if c is not None:
            setattr(cfg, k, c)
    if cfg.bundle is None:
        raise EdgeCXRError("no bundle: give BUNDLE or set bundle in the --config file")
    if not cfg.dicom_port and not cfg.http:
        raise EdgeCXRError("no door: --dicom-port 0 turns DICOM off, so give --http HOST:PORT")
    return cfg
