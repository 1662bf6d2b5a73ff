"""The host end of the cable as a library: push, ensure, remote bench and remote predict.

Each function takes an open :class:`~edgecxr.device.link.remote.RemoteClient` and an ``echo``
callback for progress lines; ``edgecxr remote ...`` (``edgecxr/cli/link.py``) only parses
arguments and prints. Nothing here imports torch.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecxr.shared.errors import EdgeCXRError

if TYPE_CHECKING:
    from edgecxr.device.link.files import TransferResult
    from edgecxr.device.link.remote import RemoteClient

Echo = Callable[[str], None]

PUSH_RETRIES = 3


def _say(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.2f} MB"


def _bytes_progress(echo: Echo, label: str, step: int = 25) -> Callable[[int, int], None]:
    """A push progress callback that prints one line per ``step`` percent."""
    shown = [-1]

    def progress(pos: int, size: int) -> None:
        pct = 100 if size <= 0 else pos * 100 // size
        mark = pct // step * step
        if mark > shown[0]:
            shown[0] = mark
            echo(f"  {label}: {mark}% ({_mb(pos)} of {_mb(size)})")

    return progress


def push_file(client: RemoteClient, path: Path, name: str | None = None, meta: dict[str, Any] | None = None,
              echo: Echo = _say, retries: int = PUSH_RETRIES, quiet: bool = False) -> TransferResult:
    """Push one file; when the link drops, reconnect and resume where the board stopped (``retries`` times)."""
    from edgecxr.device.link import LinkError, ProtocolMismatch

    label = name or path.name
    progress = None if quiet else _bytes_progress(echo, label)
    for attempt in range(retries + 1):
        try:
            return client.push(path, name, meta, on_progress=progress)
        except ProtocolMismatch:
            raise
        except LinkError as exc:
            if attempt >= retries:
                raise
            echo(f"  link lost ({exc}); reconnecting to resume {label} (attempt {attempt + 2} of {retries + 1})")
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _describe_push(res: TransferResult) -> str:
    resumed = f", resumed at {_mb(res.resumed_from)}" if res.resumed_from else ""
    return f"{res.name}: {_mb(res.size)} in {res.seconds:.1f}s ({res.rate / 1e3:.0f} kB/s{resumed})"


def push_bundle(client: RemoteClient, path: str | os.PathLike[str], echo: Echo = _say,
                retries: int = PUSH_RETRIES, check: bool = True) -> dict[str, Any]:
    """Send a bundle (a folder is verified and packed first; a .tar is checked unless ``check`` is false).

    Returns what the board answered: ``installed`` (its folder name there), ``manifest_sha256``...
    """
    from edgecxr.device import bundle

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="edgecxr-push-") as tmp:
        if path.is_dir():
            bundle.verify(path)
            archive = bundle.pack(path, Path(tmp) / f"{path.name}.tar")  # deterministic: a re-push resumes
        elif path.is_file():
            if check:
                bundle.unpack(path, Path(tmp) / "check")
            archive = path
        else:
            raise EdgeCXRError("bundle not found (give a bundle folder or its .tar)", path)
        res = push_file(client, archive, meta={"kind": "bundle"}, echo=echo, retries=retries)
    echo(f"pushed {_describe_push(res)} -> installed {res.result.get('installed')} on the board")
    return {**res.result, "size": res.size, "resumed_from": res.resumed_from, "bytes_sent": res.bytes_sent,
            "seconds": res.seconds}


def board_bundles(client: RemoteClient) -> list[dict[str, Any]]:
    got = client.request("bundles").get("bundles")
    return [b for b in got if isinstance(b, dict)] if isinstance(got, list) else []


def ensure_bundle(client: RemoteClient, bundle_dir: str | os.PathLike[str], echo: Echo = _say,
                  retries: int = PUSH_RETRIES) -> str:
    """The board's name for this bundle folder; pushes it unless the board holds the same manifest (sha256)."""
    from edgecxr.device.bundle import MANIFEST, verify
    from edgecxr.shared.fsutil import sha256_file

    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise EdgeCXRError("not a bundle folder", bundle_dir)
    verify(bundle_dir)
    sha = sha256_file(bundle_dir / MANIFEST)
    same = [b for b in board_bundles(client) if b.get("manifest_sha256") == sha]
    same.sort(key=lambda b: b.get("name") != bundle_dir.name)
    if same:
        echo(f"{bundle_dir.name}: already on the board as {same[0]['name']} (manifest sha256 {sha[:12]})")
        return str(same[0]["name"])
    res = push_bundle(client, bundle_dir, echo=echo, retries=retries)
    if res.get("manifest_sha256") != sha:
        raise EdgeCXRError(f"the board installed {res.get('installed')} with another manifest than {bundle_dir}")
    return str(res["installed"])


def _pack_images(folder: Path, archive: Path) -> int:
    """A deterministic .tar of a labelled folder (paths relative to it), so a re-push resumes."""
    from edgecxr.shared.fsutil import write_tar

    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise EdgeCXRError("no files in the image folder", folder)
    write_tar([(p.relative_to(folder).as_posix(), p) for p in files], archive)
    return len(files)


def push_images(client: RemoteClient, images: str | os.PathLike[str], echo: Echo = _say,
                retries: int = PUSH_RETRIES) -> str:
    """Send a labelled folder (NORMAL/, PNEUMONIA/) or an .npz to the board; returns its name there for bench."""
    images = Path(images)
    if images.is_dir():
        with tempfile.TemporaryDirectory(prefix="edgecxr-push-") as tmp:
            archive = Path(tmp) / f"{images.name}.tar"
            n = _pack_images(images, archive)
            res = push_file(client, archive, meta={"kind": "images"}, echo=echo, retries=retries)
        echo(f"pushed {_describe_push(res)} ({n} files) -> images/{res.result.get('images')} on the board")
        return str(res.result["images"])
    if images.is_file():
        res = push_file(client, images, meta={"kind": "image"}, echo=echo, retries=retries)
        echo(f"pushed {_describe_push(res)}")
        return str(res.result["image"])
    raise EdgeCXRError("image folder or .npz not found", images)


def progress_line(p: dict[str, Any]) -> str:
    """One line for a PROGRESS message of the board's bench/predict."""
    stage = p.get("stage")
    if stage == "benchmarking":
        return (f"  board: benchmarking {p.get('bundle')} on {p.get('device')} ({p.get('iterations')} iterations, "
                f"{p.get('warmup')} warm-up; images: {p.get('data')})")
    if stage == "log":
        return f"  board: {p.get('message')}"
    if stage:
        rest = " ".join(f"{k}={v}" for k, v in p.items() if k not in ("stage", "op", "final"))
        return f"  board: {stage} {rest}".rstrip()
    return "  board: " + " ".join(f"{k}={v}" for k, v in p.items() if k != "op")


def bench_remote(client: RemoteClient, bundle_dir: str | os.PathLike[str], results: str | os.PathLike[str] | None,
                 params: dict[str, Any] | None = None, images: str | os.PathLike[str] | None = None,
                 echo: Echo = _say) -> tuple[dict[str, Any], Path | None]:
    """Bench a bundle on the board (pushing it if needed) and append the board's record to ``results/<device>.jsonl``.

    ``params``: warmup, iterations, time_budget_s, batch, extra_batch, threads, max_images, options.
    ``results=None`` stores nothing.  Returns (record, results file).
    """
    from edgecxr.device.bench import store
    from edgecxr.device.bundle import MANIFEST
    from edgecxr.shared.fsutil import sha256_file

    bundle_dir = Path(bundle_dir)
    name = ensure_bundle(client, bundle_dir, echo)
    req = {k: v for k, v in (params or {}).items() if v is not None}
    if images is not None:
        req["images"] = push_images(client, images, echo)
    rec = client.request("bench", {**req, "bundle": name}, on_progress=lambda p: echo(progress_line(p)))
    if rec.get("kind") != "edgecxr-bench" or not isinstance(rec.get("device"), str):
        raise EdgeCXRError("the board answered bench with something that is not a bench record")
    if (rec.get("subject") or {}).get("manifest_sha256") != sha256_file(bundle_dir / MANIFEST):
        raise EdgeCXRError(f"the board benched another bundle than {bundle_dir} (manifest sha256 differs)")
    path = store(rec, results) if results is not None else None
    return rec, path


def predict_remote(client: RemoteClient, images: list[Path], bundle: str, threads: int | None = None,
                   echo: Echo = _say, explain: Path | None = None,
                   explain_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Push ``images``, classify them on the board with ``bundle`` (an installed name, or a local folder).

    ``explain``: the board also makes occlusion heatmaps; their PNGs come back over the cable into
    that folder (with index.html and explain.json)."""
    images = [Path(p) for p in images]
    if explain is not None:
        from edgecxr.device.explain import check_out

        check_out(explain, False)
    if not images:
        raise EdgeCXRError("no images given")
    for p in images:
        if not p.is_file():
            raise EdgeCXRError("image not found", p)
    names = [p.name for p in images]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EdgeCXRError(f"several images are named {', '.join(dup)}; the board stores them by name, rename one")
    if Path(bundle).is_dir():
        name = ensure_bundle(client, bundle, echo)
    else:
        have = board_bundles(client)
        if not any(bundle in (b.get("name"), b.get("bundle")) for b in have):
            listed = ", ".join(str(b.get("name")) for b in have) or "none"
            raise EdgeCXRError(f"no bundle '{bundle}' on the board (installed: {listed}); "
                               "give a local bundle folder to push it, or use edgecxr remote push")
        name = bundle
    for p in images:
        push_file(client, p, meta={"kind": "image"}, echo=echo, quiet=True)
    req: dict[str, Any] = {"bundle": name, "images": names, "threads": threads}
    if explain is not None:
        req["explain"] = dict(explain_options or {}) or True
    out = client.request("predict", req, on_progress=lambda p: echo(progress_line(p)))
    rows = out.get("predictions")
    if not isinstance(rows, list) or len(rows) != len(images):
        raise EdgeCXRError("the board answered predict with the wrong number of rows")
    for p, row in zip(images, rows, strict=True):
        row["file"] = str(p)
    if explain is not None:
        pull_heatmaps(client, rows, explain, name)
    return rows


def pull_heatmaps(client: RemoteClient, rows: list[dict[str, Any]], out: Path, bundle: str) -> None:
    """Fetch each row's heatmap PNG from the board's store; write them, index.html and explain.json into ``out``."""
    import tempfile

    from edgecxr.device.explain import pulled_page

    pngs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix=".edgecxr-pull-") as tmp:
        for row in rows:
            rel = row.get("png")
            if not rel:
                continue
            name = Path(rel).name
            got = client.pull(rel, Path(tmp) / str(len(pngs)))
            pngs[name] = Path(got).read_bytes()
            row["board_png"], row["png"] = rel, name
            row.pop("heat", None)
    pulled_page(rows, Path(out), pngs, f"edgecxr remote predict --explain: {bundle} (on the board), occlusion")


def format_info(info: dict[str, Any]) -> list[str]:
    f = info.get("device_facts") or {}
    mem = f.get("mem_total_mb")
    lines = [
        f"device:    {info.get('device')}",
        f"hostname:  {info.get('hostname')}",
        f"board:     {f.get('board') or '-'}",
        f"cpu:       {f.get('cpu_model') or info.get('machine')} ({f.get('cores') or info.get('cpu_count')} cores, "
        f"{f.get('machine') or info.get('machine')}; flags: {', '.join(f.get('cpu_flags') or []) or '-'})",
        f"memory:    {f'{mem:.0f} MB' if isinstance(mem, (int, float)) else '-'}",
        f"os:        {f.get('os') or info.get('platform')}",
        f"software:  python {info.get('python')}, edgecxr {info.get('edgecxr')}, link protocol {info.get('protocol')}",
        f"store:     {info.get('store')}",
        f"data:      {info.get('data') or '- (bench uses pushed images or the bundle reference set)'}",
        f"ops:       {', '.join(info.get('ops') or [])}",
    ]
    bundles = info.get("bundles") or []
    lines.append(f"bundles:   {len(bundles) or 'none'}")
    for b in bundles:
        if b.get("error"):
            lines.append(f"  {b.get('name'):<28} error: {b['error']}")
        else:
            lines.append(f"  {b.get('name'):<28} {b.get('backend', '-'):<12} {b.get('precision', '-'):<6} "
                         f"{_mb(b.get('model_bytes') or 0):>9}  manifest {str(b.get('manifest_sha256'))[:12]}")
    return lines
