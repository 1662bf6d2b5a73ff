"""``edgecxr serve``: the board in the clinic's imaging network (see edgecxr.device.serve).

Register with ``from edgecxr.cli.serve import register; register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    bundle: Annotated[Path | None, typer.Argument(help="Bundle folder (or `bundle` in --config)")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="This node's AE title (default: EDGECXR)")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port", help="DICOM port (default: 11112; 0: no DICOM "
                                                   "door, HTTP only)")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: 127.0.0.1, loopback only; "
                                                  "0.0.0.0 for the clinic's network)")] = None,
    pacs: Annotated[str | None, typer.Option(help="Send each SR to this PACS by C-STORE: AET@HOST:PORT")] = None,
    spool: Annotated[Path | None, typer.Option(help="Spool folder: received instances, SRs, outbox, results log "
                                                    "(default: ./spool)")] = None,
    allow_ae: Annotated[list[str] | None, typer.Option("--allow-ae", help="Accept associations only from this "
                                                       "calling AE title (repeatable) (default: any)")] = None,
    spool_limit_mb: Annotated[float | None, typer.Option("--spool-limit-mb", help="Answer 0xA700 (out of "
                                                         "resources) when waiting instances exceed this (default: 1024)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with these settings (options given here win)")] = None,
    allow_unsigned: Annotated[bool, typer.Option("--allow-unsigned", help="Run a bundle that is not signed by a "
                                                 "trusted key (never on a clinical node)")] = False,
    key: Annotated[list[Path] | None, typer.Option(help="Trust this public key for the bundle (repeatable) "
                                                   "(default: this board's trusted keys)")] = None,
    results: Annotated[Path | None, typer.Option(help="Results log (JSON lines) (default: SPOOL/results.jsonl)")] = None,
    threads: Annotated[int | None, typer.Option(help="Runtime threads")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Refuse images with more pixels than this, from the "
                                                        "header (default: 64000000)")] = None,
    heatmap: Annotated[bool, typer.Option("--heatmap", help="Also send a Secondary Capture of the occlusion "
                                          "heatmap, NOT FOR DIAGNOSIS burned into its pixels")] = False,
    http: Annotated[str | None, typer.Option(help="Also serve HTTP on HOST:PORT (a bare PORT: loopback): the Open "
                                                  "Inference Protocol (KServe v2) at /v2, DICOMweb STOW-RS at "
                                                  "/dicomweb/studies, /metrics, and a page at /")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="Require this bearer token on infer, "
                                                    "STOW-RS and the page")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="... and this private key (PEM)")] = None,
    http_max_mb: Annotated[float | None, typer.Option("--http-max-mb", help="Largest request body (default: 64)")] = None,
    http_queue: Annotated[int | None, typer.Option("--http-queue", help="Inference requests that may wait; more get "
                                                   "503 with Retry-After (default: 16)")] = None,
):
    """Receive X-rays over DICOM (C-STORE, C-ECHO), read each with the bundle, and write a TID 1500
    Structured Report in the source study, sent back to the PACS. With --http, the same node also
    answers the Open Inference Protocol (tritonclient, the kserve SDK), DICOMweb STOW-RS, Prometheus
    and a browser. Runs until SIGTERM or Ctrl-C.

    Example: edgecxr serve dist/rpi4-int8 --ae-title EDGECXR --dicom-port 11112 --pacs ORTHANC@10.0.0.5:4242 --spool /var/lib/edgecxr/spool --allow-ae ORTHANC --http 0.0.0.0:8000 --token-file /etc/edgecxr/token
    """
    from edgecxr.device.serve.config import load
    from edgecxr.device.serve.node import serve as run_serve

    cfg = load(config, bundle=bundle, ae_title=ae_title, dicom_port=dicom_port, host=host, pacs=pacs, spool=spool,
               allow_ae=allow_ae, spool_limit_mb=spool_limit_mb, allow_unsigned=allow_unsigned, key=key,
               results=results, threads=threads, max_pixels=max_pixels, heatmap=heatmap, http=http, token_file=token_file,
               tls_cert=tls_cert, tls_key=tls_key, http_max_mb=http_max_mb, http_queue=http_queue)
    raise typer.Exit(run_serve(cfg))
