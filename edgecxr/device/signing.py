"""Signed bundles: who made a bundle, and a pin on exactly which one (device side).

A bundle's ``manifest.json`` lists the sha256 of every other file, so the integrity check in
:func:`edgecxr.device.bundle.verify` proves the files agree with the manifest, but anyone can edit the
manifest (threshold, labels, preprocessing) and its table together.  A signature closes that:

* ``edgecxr keys new --out NAME`` writes ``NAME.key`` (Ed25519 private key, PKCS#8 PEM, mode 0600)
  and ``NAME.pub`` (SubjectPublicKeyInfo PEM).
* ``edgecxr export ... --sign NAME.key`` writes ``bundle.sig`` into the bundle before it is moved
  into place: a DSSE envelope (https://github.com/secure-systems-lab/dsse) whose payload is an
  in-toto Statement v1 naming *every* file of the bundle, ``manifest.json`` included, with its sha256.
* A machine with trusted keys (``--key PUB`` on ``verify``; otherwise ``$EDGECXR_TRUSTED_KEYS`` or
  ``<config>/edgecxr/trusted_keys``, one or more PEM public keys) refuses an unsigned bundle, a
  bundle signed by another key, and a bundle whose files differ from what was signed, inside
  :func:`edgecxr.device.bundle.verify`, i.e. before any runtime loads the model (bench, predict, gate,
  unpack and the agent's installs all go through it).
* Without trusted keys nothing changes, and ``edgecxr verify`` says that only integrity was checked.
* ``--expect DIGEST`` pins one bundle: its digest is ``sha256:`` + the sha256 of ``manifest.json``,
  which (once the file table is verified) fixes every byte of the bundle.

Why not OpenSSF ``model-signing`` (tried, version 1.1.1): it does not install with the
board's pins (pydantic, typing_extensions), its 1.1.1 release fails to import without the undeclared
pyOpenSSL, and it brings about 35 packages (sigstore, TUF, requests...) onto a board that needs one
signature check.  The envelope here is the same standard (DSSE + in-toto Statement) it uses.

``cryptography`` is imported only when a key is used or configured: a board without trusted keys
runs unsigned bundles without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.shared.errors import BundleError, EdgeCXRError
from edgecxr.shared.fsutil import atomic_write_bytes, atomic_write_text, sha256_file

SIGNATURE = "bundle.sig"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://github.com/edgecxr/bundle-signature/v1"
ENV_KEYS = "EDGECXR_TRUSTED_KEYS"
MAX_SIG_BYTES = 1 << 20
MAX_KEYS_BYTES = 1 << 20


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - a base dependency
        raise EdgeCXRError("signatures need the 'cryptography' package (pip install cryptography)") from None
    return serialization, ed25519, InvalidSignature


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgecxr"


def default_keys_file() -> Path:
    return config_dir() / "trusted_keys"


# ---------------------------------------------------------------- keys
@dataclass(frozen=True)
class PublicKey:
    key: Any  # cryptography Ed25519PublicKey
    source: str

    @property
    def raw(self) -> bytes:
        serialization, _, _ = _crypto()
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def pem(self) -> str:
        serialization, _, _ = _crypto()
        return self.key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def new_keypair(out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write OUT.key (private, 0600) and OUT.pub; refuse to overwrite unless ``force``."""
    serialization, ed25519, _ = _crypto()
    out = Path(out)
    if out.suffix in (".key", ".pub"):
        out = out.with_suffix("")
    priv_p, pub_p = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for p in (priv_p, pub_p):
        if p.exists() and not force:
            raise EdgeCXRError("key file exists; use --force to replace it (bundles signed with it will no "
                               "longer verify against the new one)", p)
    k = ed25519.Ed25519PrivateKey.generate()
    priv = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(priv_p, priv)
    os.chmod(priv_p, 0o600)
    atomic_write_bytes(pub_p, pub)
    return priv_p, pub_p


def _read_small(path: Path, limit: int, what: str) -> bytes:
    if not path.exists():
        raise EdgeCXRError(f"{what} not found", path)
    if not path.is_file():
        raise EdgeCXRError(f"{what} is not a regular file", path)
    if path.stat().st_size > limit:
        raise EdgeCXRError(f"{what} is too large to be a key file", path)
    return path.read_bytes()


def load_private_key(path: str | Path):
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    data = _read_small(path, MAX_KEYS_BYTES, "signing key")
    try:
        k = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        hint = " (that is a public key; sign with the .key file)" if b"PUBLIC KEY" in data else ""
        raise EdgeCXRError(f"not a usable private key{hint} ({str(e).splitlines()[0][:80] if str(e) else 'unreadable'})",
                           path) from None
    if not isinstance(k, ed25519.Ed25519PrivateKey):
        raise EdgeCXRError("signing key is not Ed25519 (make one with `edgecxr keys new`)", path)
    return k


def load_public_keys(path: str | Path) -> list[PublicKey]:
    """Every PEM public key in a file (a trusted-keys file may hold several); at least one."""
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    data = _read_small(path, MAX_KEYS_BYTES, "public key file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise EdgeCXRError("public key file is not PEM text", path) from None
    blocks, cur = [], None
    for line in text.splitlines():
        s = line.strip()
        if s == "-----BEGIN PUBLIC KEY-----":
            cur = [s]
        elif cur is not None:
            cur.append(s)
            if s == "-----END PUBLIC KEY-----":
                blocks.append("\n".join(cur) + "\n")
                cur = None
    if not blocks:
        hint = " (that is a private key; give the .pub file)" if "PRIVATE KEY" in text else ""
        raise EdgeCXRError(f"no PEM public key in file{hint}", path)
    keys = []
    for b in blocks:
        try:
            k = serialization.load_pem_public_key(b.encode())
        except (ValueError, TypeError):
            raise EdgeCXRError("a public key in the file is not readable PEM", path) from None
        if not isinstance(k, ed25519.Ed25519PublicKey):
            raise EdgeCXRError("a public key in the file is not Ed25519", path)
        keys.append(PublicKey(k, str(path)))
    return keys


def trusted_keys_source() -> Path | None:
    """The trusted-keys file in force: $EDGECXR_TRUSTED_KEYS (must exist) or the config file if present."""
    env = os.environ.get(ENV_KEYS, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            # fail closed: a board told to trust keys must not quietly run unsigned bundles
            raise EdgeCXRError(f"trusted keys file not found (from ${ENV_KEYS})", p)
        return p
    p = default_keys_file()
    return p if p.exists() else None


def trusted_keys(explicit: list[str | Path] | None = None) -> tuple[list[PublicKey], str | None]:
    """Keys to demand a signature from: ``explicit`` files if given, else the trusted-keys file."""
    if explicit:
        keys = [k for p in explicit for k in load_public_keys(p)]
        return keys, ", ".join(str(p) for p in explicit)
    src = trusted_keys_source()
    if src is None:
        return [], None
    return load_public_keys(src), str(src)


def trust_key(pub: str | Path, keys_file: str | Path | None = None) -> tuple[Path, bool]:
    """Add the key(s) in ``pub`` to the trusted-keys file (created if absent); False if already there."""
    new = load_public_keys(pub)
    dest = Path(keys_file) if keys_file else (trusted_keys_source() or default_keys_file())
    have = load_public_keys(dest) if dest.exists() else []
    ids = {k.keyid for k in have}
    add = [k for k in new if k.keyid not in ids]
    if not add:
        return dest, False
    text = "".join(k.pem() for k in have + add)
    atomic_write_text(dest, text)
    return dest, True


# ---------------------------------------------------------------- DSSE envelope
def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def bundle_files(folder: Path) -> list[str]:
    """The names a signature covers: every regular file except the signature and dot files."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name != SIGNATURE and not p.name.startswith(".") and (p.is_file() or p.is_symlink()))


def digest(folder: str | Path) -> str:
    """``sha256:<hex>`` of the bundle's manifest.json: pins every file once the file table verifies."""
    return "sha256:" + sha256_file(Path(folder) / "manifest.json")


def sign_bundle(folder: str | Path, key_path: str | Path) -> dict[str, Any]:
    """Write ``bundle.sig`` into a bundle folder: a DSSE envelope over every file's sha256."""
    folder = Path(folder)
    k = load_private_key(key_path)
    serialization, _, _ = _crypto()
    pub = PublicKey(k.public_key(), str(key_path))
    names = bundle_files(folder)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": sha256_file(folder / n)}} for n in names],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"bundle": folder.name, "files": len(names)},
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    sig = k.sign(pae(PAYLOAD_TYPE, payload))
    env = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
           "signatures": [{"keyid": pub.keyid, "sig": base64.b64encode(sig).decode()}]}
    atomic_write_text(folder / SIGNATURE, json.dumps(env, indent=1) + "\n")
    check_signature(folder, [pub])
    return {"keyid": pub.keyid, "files": names}


def _b64(s: Any, what: str, path: Path) -> bytes:
    if not isinstance(s, str):
        raise BundleError(f"{SIGNATURE} is malformed ({what} is not a string)", path)
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise BundleError(f"{SIGNATURE} is malformed ({what} is not base64)", path) from None


def read_envelope(folder: Path) -> dict[str, Any]:
    p = folder / SIGNATURE
    if p.is_symlink() or not p.is_file():
        raise BundleError(f"{SIGNATURE} is not a regular file", folder)
    if p.stat().st_size > MAX_SIG_BYTES:
        raise BundleError(f"{SIGNATURE} is too large", folder)
    try:
        env = json.loads(p.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BundleError(f"{SIGNATURE} is not valid JSON", folder) from None
    if not isinstance(env, dict) or not isinstance(env.get("signatures"), list) or not env["signatures"]:
        raise BundleError(f"{SIGNATURE} is malformed (no signatures)", folder)
    if env.get("payloadType") != PAYLOAD_TYPE:
        raise BundleError(f"{SIGNATURE} has payload type {str(env.get('payloadType'))[:60]!r}, "
                          f"expected {PAYLOAD_TYPE}", folder)
    return env


def check_signature(folder: str | Path, keys: list[PublicKey], manifest_files: dict[str, Any] | None = None) -> PublicKey:
    """Raise BundleError unless ``bundle.sig`` is a valid signature by one of ``keys`` over exactly
    the files in ``folder`` (names and sha256).  Returns the key that signed."""
    folder = Path(folder)
    _, _, InvalidSignature = _crypto()
    if not (folder / SIGNATURE).exists() and not (folder / SIGNATURE).is_symlink():
        raise BundleError("bundle is not signed, and only signed bundles are trusted here", folder)
    env = read_envelope(folder)
    payload = _b64(env.get("payload"), "payload", folder)
    by_id = {k.keyid: k for k in keys}
    signer = None
    ids = []
    for s in env["signatures"]:
        if not isinstance(s, dict):
            raise BundleError(f"{SIGNATURE} is malformed (a signature is not an object)", folder)
        sig = _b64(s.get("sig"), "sig", folder)
        kid = s.get("keyid")
        ids.append(str(kid)[:16])
        cands = [by_id[kid]] if isinstance(kid, str) and kid in by_id else []
        for k in cands:
            try:
                k.key.verify(sig, pae(PAYLOAD_TYPE, payload))
                signer = k
                break
            except InvalidSignature:
                raise BundleError("signature does not verify: the bundle or its signature was altered after "
                                  "signing", folder) from None
        if signer:
            break
    if signer is None:
        raise BundleError(f"signed by a key that is not trusted here (key id {', '.join(ids)}...)", folder)
    check_statement(folder, payload, manifest_files)
    return signer


def check_statement(folder: Path, payload: bytes, manifest_files: dict[str, Any] | None = None) -> None:
    """Raise BundleError unless the signed statement names exactly the files in ``folder`` with their
    sha256. Needs no key: it tells whether the files are those that were signed, not who signed."""
    try:
        st = json.loads(payload)
        subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
        ok = st.get("_type") == STATEMENT_TYPE and st.get("predicateType") == PREDICATE_TYPE
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise BundleError(f"{SIGNATURE} payload is not an edgecxr bundle statement", folder) from None
    if not ok:
        raise BundleError(f"{SIGNATURE} payload is not an edgecxr bundle statement", folder)
    on_disk = bundle_files(folder)
    missing, extra = sorted(set(subjects) - set(on_disk)), sorted(set(on_disk) - set(subjects))
    if missing or extra:
        what = "; ".join(x for x in (f"signed but missing: {', '.join(missing)}" if missing else "",
                                     f"not signed: {', '.join(extra)}" if extra else "") if x)
        raise BundleError(f"files differ from what was signed ({what})", folder)
    known = manifest_files or {}
    for n in on_disk:
        f = folder / n
        if f.is_symlink() or not f.is_file():
            raise BundleError(f"{n} is not a regular file", folder)
        # files already checked against the manifest's table need no second hash
        sha = known[n]["sha256"] if n in known else sha256_file(f)
        if sha != subjects[n]:
            raise BundleError(f"{n} differs from what was signed (sha256 does not match the signature)", folder)


def normalize_digest(d: str) -> str:
    s = d.strip().lower()
    s = s.removeprefix("sha256:")
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise EdgeCXRError(f"--expect {d!r} is not a bundle digest (sha256:<64 hex>, as `edgecxr verify` prints)")
    return "sha256:" + s


@dataclass
class Trust:
    """What :func:`enforce` established about a verified bundle."""

    digest: str
    signed: bool
    signer: str | None  # key id of the trusted key that signed
    keys_source: str | None  # where the trusted keys came from (None: no keys, integrity only)

    def describe(self) -> str:
        if self.signer:
            return f"signed by trusted key {self.signer[:16]} (from {self.keys_source})"
        sig = "its files match its signature, but " if self.signed else "unsigned; "
        return (f"integrity checked, authorship NOT checked ({sig}no trusted keys: pass --key PUB, set "
                f"${ENV_KEYS}, or add keys to {default_keys_file()})")


def enforce(folder: str | Path, manifest_files: dict[str, Any], keys: list[str | Path] | None = None,
            expect: str | None = None) -> Trust:
    """The trust policy, run by :func:`edgecxr.device.bundle.verify` after the integrity check."""
    folder = Path(folder)
    want = normalize_digest(expect) if expect else None
    dg = digest(folder)
    if want and dg != want:
        raise BundleError(f"bundle digest {dg} is not the expected {want}", folder)
    signed = (folder / SIGNATURE).exists() or (folder / SIGNATURE).is_symlink()
    pubs, src = trusted_keys(keys)
    if not pubs:
        if signed:  # no key to check who signed, but a signature that no longer fits its files is seen
            env = read_envelope(folder)
            check_statement(folder, _b64(env.get("payload"), "payload", folder), manifest_files)
        return Trust(dg, signed, None, None)
    k = check_signature(folder, pubs, manifest_files)
    return Trust(dg, True, k.keyid, src)
