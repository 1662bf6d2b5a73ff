"""``edgecxr agent`` (on the board) and ``edgecxr remote ...`` (on the host), over a serial line.

Register with ``from edgecxr.cli.link import register; register(app)``.  The commands only parse
arguments and print: the work is in :mod:`edgecxr.device.link.host` (push, ensure, remote bench,
remote predict over an open :class:`~edgecxr.device.link.remote.RemoteClient`) and in the board's
agent, :mod:`edgecxr.device.link.board`.  Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgecxr.device.link.host import (
    PUSH_RETRIES,
    bench_remote,
    format_info,
    predict_remote,
    push_bundle,
    push_images,
)
from edgecxr.shared.errors import EdgeCXRError

if TYPE_CHECKING:
    from edgecxr.device.link.remote import RemoteClient


DEFAULT_BAUD = 921600

remote_app = typer.Typer(
    no_args_is_help=True,
    help="Drive a board that runs `edgecxr agent` over a serial line (USB gadget serial, UART, USB-serial "
         "adapter): push bundles, bench and predict there, keep the results here. The board runs "
         "`edgecxr agent --port /dev/ttyGS0`.\n\nExample: edgecxr remote info --port /dev/ttyUSB0",
)


def register(app: typer.Typer) -> None:
    """Add ``agent`` and the ``remote`` sub-commands to the main ``edgecxr`` app."""
    app.command("agent")(agent)
    app.add_typer(remote_app, name="remote")


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


@contextlib.contextmanager
def _client(port: str, baud: int) -> Iterator[RemoteClient]:
    from edgecxr.device.link import RemoteClient

    client = RemoteClient(port, baud=baud)
    with client:
        yield client


# ---------------------------------------------------------------- commands
PortOption = Annotated[str, typer.Option(
    "--port", "-p", envvar="EDGECXR_PORT",
    help="Serial port to the board: /dev/ttyUSB0, /dev/ttyACM0, COM3, or a pyserial URL (socket://host:port)")]
BaudOption = Annotated[int, typer.Option(help="Line rate in baud (ignored by USB gadget serial)")]


def agent(
    port: Annotated[str, typer.Option(
        "--port", "-p", envvar="EDGECXR_AGENT_PORT",
        help="Serial port on the board: /dev/ttyGS0 (USB gadget), /dev/ttyS0, /dev/ttyAMA0, or a pyserial URL")],
    baud: BaudOption = DEFAULT_BAUD,
    store: Annotated[Path, typer.Option(help="Folder for received bundles, images and a copy of the results")]
    = Path("~/edgecxr-agent"),
    data: Annotated[Path | None, typer.Option(
        help="Labelled images on the board (NORMAL/, PNEUMONIA/) for bench; default: pushed images or the "
             "bundle's reference set")] = None,
    device: Annotated[str | None, typer.Option(help="Device name for the results (default: from the CPU)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every frame-level event")] = False,
):
    """Serve a host over a serial line: receive bundles (installed only after they verify), run bench and
    predict for `edgecxr remote`. Runs until Ctrl-C (or SIGTERM).

    Example: edgecxr agent --port /dev/ttyGS0 --data ~/xrays/val
    """
    import logging

    from edgecxr.device.link.board import make_agent

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="edgecxr: %(message)s")
    store = store.expanduser()
    from edgecxr.device.signing import trusted_keys

    keys, src = trusted_keys()  # a missing $EDGECXR_TRUSTED_KEYS file stops the agent here (fail closed)
    _say(f"edgecxr agent: {len(keys)} trusted key(s) from {src}: unsigned bundles are refused" if keys else
         "edgecxr agent: no trusted keys: any bundle whose files verify is installed (edgecxr keys trust PUB)")
    ag = make_agent(port, store, data.expanduser() if data is not None else None, device, baud=baud)
    service = ag.service  # type: ignore[attr-defined]
    _say(f"edgecxr agent: device {service.device}, {baud} baud, data {service.data or '-'}; Ctrl-C to stop")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        ag.serve()
    except KeyboardInterrupt:
        _say(f"edgecxr agent: stopped; {ag.sessions} session(s), {ag.requests} request(s), "
             f"{ag.files_received} file(s) received")
    finally:
        signal.signal(signal.SIGTERM, old)


@remote_app.command("push")
def remote_push(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (packed to a .tar here) or bundle .tar")],
    port: PortOption,
    baud: BaudOption = DEFAULT_BAUD,
    retries: Annotated[int, typer.Option(help="Reconnect and resume this many times when the link drops")]
    = PUSH_RETRIES,
):
    """Send a bundle to the board; it is installed there only after every file verifies. An interrupted
    push resumes where it stopped (run it again).

    Example: edgecxr remote push dist/rpi4-int8 --port /dev/ttyUSB0
    """
    with _client(port, baud) as client:
        push_bundle(client, bundle, retries=retries)


@remote_app.command("bench")
def remote_bench(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folders (pushed when the board lacks them)")],
    port: PortOption,
    baud: BaudOption = DEFAULT_BAUD,
    results: Annotated[Path, typer.Option(help="Results folder on this host")] = Path("benchmarks/results"),
    images: Annotated[Path | None, typer.Option(
        help="Labelled images on this host to send and bench on (folder or .npz); default: the board's --data, "
             "else the bundle's reference set")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up iterations")] = 10,
    iterations: Annotated[int, typer.Option(help="Timed iterations (minimum when --time is set)")] = 100,
    time_budget: Annotated[float, typer.Option("--time", help="Time budget in seconds for the timed loop")] = 0.0,
    batch: Annotated[int, typer.Option(help="Batch size for the latency loop")] = 1,
    extra_batch: Annotated[int, typer.Option(help="Also time this larger batch (throughput)")] = 0,
    threads: Annotated[int | None, typer.Option(help="Threads (default: the profile's, capped at the board's cores)")]
    = None,
    max_images: Annotated[int, typer.Option(help="Use at most this many evaluation images (0 = all)")] = 0,
    no_store: Annotated[bool, typer.Option("--no-store", help="Print only; do not append to the results file")]
    = False,
):
    """Benchmark bundles on the board and append its records to <results>/<device>.jsonl here, exactly as
    `edgecxr bench` on the board would (the device is the board's name).

    Example: edgecxr remote bench dist/rpi4-int8 dist/rpi4-fp32 --port /dev/ttyUSB0 --iterations 200
    """
    from edgecxr.cli.output import print_bench

    params: dict[str, Any] = {"warmup": warmup, "iterations": iterations, "time_budget_s": time_budget, "batch": batch,
              "extra_batch": extra_batch, "threads": threads, "max_images": max_images}
    for b in bundles:
        if not b.is_dir():
            raise EdgeCXRError("not a bundle folder (give the folder; remote push takes a .tar)", b)
    with _client(port, baud) as client:
        if images is not None:
            params["images"] = push_images(client, images)
        for i, b in enumerate(bundles):
            rec, path = bench_remote(client, b, None if no_store else results, params)
            if i == 0:
                typer.echo(f"{'bundle':<28} {'size MB':>8} {'p50 ms':>8} {'p90 ms':>8} {'img/s':>7} {'AUC':>7} "
                           f"{'drop':>8} {'agree':>6}  runtime")
            print_bench(rec, path)


@remote_app.command("predict")
def remote_predict(
    images: Annotated[list[Path], typer.Argument(help="X-ray files on this host (JPEG, PNG, DICOM)")],
    bundle: Annotated[str, typer.Option(help="Bundle installed on the board (name), or a local bundle folder")],
    port: PortOption,
    baud: BaudOption = DEFAULT_BAUD,
    threads: Annotated[int | None, typer.Option(help="Threads")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines")] = False,
    explain: Annotated[Path | None, typer.Option(help="Also make occlusion heatmaps on the board and bring the PNGs back into this folder")] = None,
):
    """Send X-rays to the board and classify them there: probability of pneumonia and the call at the
    bundle's threshold.

    Example: edgecxr remote predict scan1.dcm scan2.jpeg --bundle rpi4-int8 --port /dev/ttyUSB0 --explain heat/
    """
    from edgecxr.device.predict import format_rows

    with _client(port, baud) as client:
        rows = predict_remote(client, images, bundle, threads, explain=explain)
    for line in format_rows(rows, json_out):
        typer.echo(line)
    if any(r.get("error") for r in rows):
        raise typer.Exit(2)


@remote_app.command("info")
def remote_info(
    port: PortOption,
    baud: BaudOption = DEFAULT_BAUD,
    json_out: Annotated[bool, typer.Option("--json", help="Print the raw JSON")] = False,
):
    """Show the board's facts (device name, CPU, memory, software) and its installed bundles.

    Example: edgecxr remote info --port /dev/ttyUSB0
    """
    import json

    with _client(port, baud) as client:
        info = client.info()
    if json_out:
        typer.echo(json.dumps(info, indent=1))
        return
    for line in format_info(info):
        typer.echo(line)
