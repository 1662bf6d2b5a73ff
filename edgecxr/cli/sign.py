"""``edgecxr keys new`` and ``edgecxr keys trust``: Ed25519 keys for signed bundles (see edgecxr.device.signing).

Register with ``from .cli_sign import register; register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

keys_app = typer.Typer(no_args_is_help=True, help="Make signing keys and choose which keys this machine trusts.")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.command("sign")(sign)


def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (made by export or `make demo`, here or elsewhere)")],
    key: Annotated[Path, typer.Option("--key", help="Private key (NAME.key from `edgecxr keys new`)")],
):
    """Sign a bundle that already exists: writes bundle.sig over every file (a release step signs
    without exporting again). The bundle must first pass its integrity check.

    Example: edgecxr sign dist/rpi4-int8 --key ~/.config/edgecxr/clinic.key
    """
    from edgecxr.device.bundle import verify
    from edgecxr.device.signing import SIGNATURE, digest, sign_bundle

    verify(bundle, trust=False)  # the files must match the manifest before anyone vouches for them
    had = (bundle / SIGNATURE).exists()
    r = sign_bundle(bundle, key)
    typer.echo(f"{bundle}: {'re-signed' if had else 'signed'} by key {r['keyid'][:16]} ({len(r['files'])} file(s)), "
               f"digest {digest(bundle)}")


@keys_app.command("new")
def keys_new(
    out: Annotated[Path, typer.Option("--out", "-o", help="Writes OUT.key (private, mode 0600: keep it on the "
                                                          "host) and OUT.pub (copy it to the boards)")],
    force: Annotated[bool, typer.Option(help="Replace existing key files")] = False,
):
    """Make an Ed25519 key pair for signing bundles.

    Example: edgecxr keys new --out ~/.config/edgecxr/clinic && edgecxr export ... --sign ~/.config/edgecxr/clinic.key
    """
    from edgecxr.device.signing import PublicKey, load_private_key, new_keypair

    priv, pub = new_keypair(out, force)
    kid = PublicKey(load_private_key(priv).public_key(), str(priv)).keyid
    typer.echo(f"wrote {priv} (private: keep it secret) and {pub} (public), key id {kid[:16]}")
    typer.echo(f"on each board: edgecxr keys trust {pub.name}")


@keys_app.command("trust")
def keys_trust(
    pub: Annotated[Path, typer.Argument(help="Public key file (.pub) from `edgecxr keys new`")],
    keys_file: Annotated[Path | None, typer.Option("--keys-file", help="Trusted-keys file (default: "
                                                    "$EDGECXR_TRUSTED_KEYS or ~/.config/edgecxr/trusted_keys)")] = None,
):
    """Trust a public key on this machine: from then on bench, predict, gate, unpack and the agent refuse
    bundles that are unsigned or not signed by a trusted key.

    Example: edgecxr keys trust clinic.pub
    """
    from edgecxr.device.signing import load_public_keys, trust_key

    dest, added = trust_key(pub, keys_file)
    kid = load_public_keys(pub)[0].keyid[:16]
    n = len(load_public_keys(dest))
    typer.echo(f"{'trusted' if added else 'already trusted'}: key {kid} in {dest} ({n} key(s)); "
               "unsigned bundles are now refused here")
