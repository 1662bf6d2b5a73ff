"""Signed bundles (edgecxr.device.signing): keys, export --sign, verify --key/--expect, and a machine with trusted
keys refusing unsigned, re-signed or edited bundles in predict, bench and the board agent, before any
runtime loads. Real exported bundles of the tiny model, real X-rays, real runtimes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from edgecxr.device.bundle import MANIFEST, pack, verify
from edgecxr.device.signing import SIGNATURE, digest, load_public_keys, new_keypair, sign_bundle, trust_key
from edgecxr.shared.errors import BundleError, EdgeCXRError
from tests.conftest import MINI, TINY, assert_clean_error, run_cli

BUNDLE = "jetson-int8"  # ONNX Runtime
IMAGE = sorted((MINI / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.fixture(autouse=True)
def _no_user_keys(tmp_path, monkeypatch):
    """Neither the user's trusted keys nor an inherited $EDGECXR_TRUSTED_KEYS leak into these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGECXR_TRUSTED_KEYS", raising=False)


@pytest.fixture()
def keys(tmp_path):
    a = new_keypair(tmp_path / "keys" / "host")
    b = new_keypair(tmp_path / "keys" / "other")
    return {"key": a[0], "pub": a[1], "other_key": b[0], "other_pub": b[1]}


@pytest.fixture()
def signed(bundle_copy, keys):
    b = bundle_copy(BUNDLE)
    sign_bundle(b, keys["key"])
    return b


def _env(keys_file: Path) -> dict:
    return {"EDGECXR_TRUSTED_KEYS": str(keys_file)}


def _edit_threshold(bundle: Path, value: float) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    m["threshold"] = value
    (bundle / MANIFEST).write_text(json.dumps(m, indent=1) + "\n")


def test_keys_new_writes_a_private_key_only_the_owner_reads_and_refuses_to_overwrite(tmp_path):
    p = run_cli("keys", "new", "--out", tmp_path / "clinic")
    assert p.returncode == 0, p.stderr
    priv, pub = tmp_path / "clinic.key", tmp_path / "clinic.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"BEGIN PUBLIC KEY" in pub.read_bytes()
    before = priv.read_bytes()
    assert_clean_error(run_cli("keys", "new", "--out", tmp_path / "clinic"), "exists", "--force")
    assert priv.read_bytes() == before
    # keys trust writes the trusted-keys file under the user's config dir
    cfg = tmp_path / "cfg"
    p = run_cli("keys", "trust", pub, env={"XDG_CONFIG_HOME": str(cfg), "EDGECXR_TRUSTED_KEYS": ""})
    assert p.returncode == 0, p.stderr
    assert [k.keyid for k in load_public_keys(cfg / "edgecxr" / "trusted_keys")] == \
        [k.keyid for k in load_public_keys(pub)]
    # a private key given where a public one belongs (and vice versa) is one clear line
    assert_clean_error(run_cli("keys", "trust", priv), "private key", ".pub")


def test_without_keys_verify_says_integrity_only(bundle_copy):
    b = bundle_copy(BUNDLE)
    p = run_cli("verify", b)
    assert p.returncode == 0, p.stderr
    assert "authorship NOT checked" in p.stdout and "integrity checked" in p.stdout
    assert f"digest {digest(b)}" in p.stdout


def test_signature_covers_the_manifest(signed, keys):
    p = run_cli("verify", signed, "--key", keys["pub"])
    assert p.returncode == 0, p.stderr
    assert "signed by trusted key" in p.stdout
    # the attack the issue found: threshold edited after export; the file table still matches
    _edit_threshold(signed, 0.90)
    verify(signed, trust=False)  # integrity alone cannot see it...
    # ...but the signature can, even with no key trusted: the files are not those that were signed
    with pytest.raises(BundleError, match="manifest.json differs from what was signed"):
        verify(signed)
    assert_clean_error(run_cli("verify", signed), "manifest.json differs from what was signed")
    assert_clean_error(run_cli("verify", signed, "--key", keys["pub"]), "manifest.json", "signed")
    # ...and neither predict nor bench runs it on a machine that trusts the key
    for args in (("predict", signed, IMAGE), ("bench", signed, "--no-store", "--iterations", "1", "--warmup", "0")):
        p = run_cli(*args, env=_env(keys["pub"]))
        assert_clean_error(p, "manifest.json differs from what was signed")
        assert "p(pneumonia)" not in p.stdout


@pytest.mark.parametrize("attack", ["unsigned", "other_key", "resigned_by_other", "model_swapped",
                                    "sig_garbage", "sig_truncated", "extra_file_signed_for", "sig_keyid_swapped",
                                    "signature_removed_from_payload"])
def test_trusted_keys_refuse_everything_but_the_signed_bundle(bundle_copy, keys, attack):
    b = bundle_copy(BUNDLE)
    other = bundle_copy("jetson-fp32")
    if attack != "unsigned":
        sign_bundle(b, keys["other_key"] if attack in ("other_key", "resigned_by_other") else keys["key"])
    trusted = keys["pub"]
    if attack == "model_swapped":  # another genuine bundle's model and manifest, this one's signature
        for n in os.listdir(other):
            shutil.copy(other / n, b / n)
    elif attack == "resigned_by_other":  # edited, then signed again by someone else's key
        _edit_threshold(b, 0.9)
        sign_bundle(b, keys["other_key"])
    elif attack == "sig_garbage":
        (b / SIGNATURE).write_bytes(os.urandom(500))
    elif attack == "sig_truncated":
        (b / SIGNATURE).write_bytes((b / SIGNATURE).read_bytes()[:100])
    elif attack == "extra_file_signed_for":
        (b / "notes.txt").write_text("hello")
    elif attack == "sig_keyid_swapped":
        env = json.loads((b / SIGNATURE).read_text())
        env["signatures"][0]["keyid"] = load_public_keys(keys["other_pub"])[0].keyid
        (b / SIGNATURE).write_text(json.dumps(env))
    elif attack == "signature_removed_from_payload":
        env = json.loads((b / SIGNATURE).read_text())
        st = json.loads(base64.b64decode(env["payload"]))
        st["subject"] = [s for s in st["subject"] if s["name"] != MANIFEST]
        env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
        (b / SIGNATURE).write_text(json.dumps(env))
    p = run_cli("predict", b, IMAGE, env=_env(trusted))
    assert_clean_error(p)
    assert "p(pneumonia)" not in p.stdout
    with pytest.raises(BundleError):
        verify(b, keys=[trusted])


def test_trusted_keys_file_in_the_config_dir_and_a_missing_env_file_fails_closed(signed, bundle_copy, keys, tmp_path):
    cfg = tmp_path / "cfg"
    trust_key(keys["pub"], cfg / "edgecxr" / "trusted_keys")
    env = {"XDG_CONFIG_HOME": str(cfg)}
    p = run_cli("predict", signed, IMAGE, env=env)
    assert p.returncode == 0, p.stderr
    assert "p(pneumonia)" in p.stdout
    assert_clean_error(run_cli("predict", bundle_copy("jetson-fp32"), IMAGE, env=env), "not signed")
    assert_clean_error(run_cli("predict", signed, IMAGE, env=_env(tmp_path / "missing")),
                       "trusted keys file not found")


def test_expect_pins_a_bundle_by_digest(signed):
    d = digest(signed)
    p = run_cli("verify", signed, "--expect", d)
    assert p.returncode == 0, p.stderr
    p = run_cli("predict", signed, IMAGE, "--expect", d.removeprefix("sha256:").upper())
    assert p.returncode == 0, p.stderr
    _edit_threshold(signed, 0.5)
    assert_clean_error(run_cli("predict", signed, IMAGE, "--expect", d), "is not the expected")
    assert_clean_error(run_cli("verify", signed, "--expect", "sha256:1234"), "not a bundle digest")


def test_a_tampered_archive_is_not_installed_by_unpack(signed, keys, tmp_path):
    good = pack(signed, tmp_path / "good.tar")
    p = run_cli("unpack", good, "--dest", tmp_path / "board", env=_env(keys["pub"]))
    assert p.returncode == 0, p.stderr
    _edit_threshold(signed, 0.9)
    bad = pack(signed, tmp_path / "bad.tar")
    p = run_cli("unpack", bad, "--dest", tmp_path / "board2", env=_env(keys["pub"]))
    assert_clean_error(p, "differs from what was signed")
    assert not (tmp_path / "board2" / signed.name).exists()


def test_board_agent_refuses_unsigned_pushes_when_it_has_keys(signed, bundle_copy, keys, tmp_path, monkeypatch):
    from edgecxr.device.link.board import BoardService

    monkeypatch.setenv("EDGECXR_TRUSTED_KEYS", str(keys["pub"]))
    svc = BoardService(tmp_path / "store")
    got = svc.install_bundle(pack(signed, tmp_path / "s" / f"{signed.name}.tar"))
    assert got["installed"] == signed.name
    installed = {p.name: p.read_bytes() for p in (svc.bundles_dir / signed.name).iterdir()}
    unsigned = tmp_path / "u" / signed.name
    shutil.copytree(signed, unsigned)
    (unsigned / SIGNATURE).unlink()
    with pytest.raises(BundleError, match=f"not signed.*installed {signed.name} is unchanged"):
        svc.install_bundle(pack(unsigned, tmp_path / "u" / f"{unsigned.name}.tar"))
    assert {p.name: p.read_bytes() for p in (svc.bundles_dir / signed.name).iterdir()} == installed


def test_sign_signs_an_existing_bundle_and_refuses_a_broken_one(bundle_copy, keys):
    b = bundle_copy(BUNDLE)
    p = run_cli("sign", b, "--key", keys["key"])
    assert p.returncode == 0, p.stderr
    assert "signed by key" in p.stdout and digest(b) in p.stdout
    assert verify(b, keys=[keys["pub"]]).trust.signer == load_public_keys(keys["pub"])[0].keyid
    p = run_cli("verify", b)  # no key trusted: integrity, and the files are those that were signed
    assert p.returncode == 0, p.stderr
    assert "its files match its signature" in p.stdout
    # a public key is not a signing key; a bundle whose files differ from its manifest is not signed
    assert_clean_error(run_cli("sign", b, "--key", keys["pub"]), "public key")
    (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:-1] + b"x")
    before = (b / SIGNATURE).read_bytes()
    assert_clean_error(run_cli("sign", b, "--key", keys["key"]), "model.onnx")
    assert (b / SIGNATURE).read_bytes() == before


def test_export_sign_writes_a_signed_bundle(tmp_path, keys):
    p = run_cli("export", TINY, "--target", "jetson", "--precision", "fp32", "--data", MINI, "--out", tmp_path / "d",
                "--sign", keys["key"])
    assert p.returncode == 0, p.stderr
    b = tmp_path / "d" / "jetson-orin-nano-fp32"
    assert (b / SIGNATURE).exists()
    t = verify(b, keys=[keys["pub"]]).trust
    assert t.signer == load_public_keys(keys["pub"])[0].keyid
    # the archive carries the signature too
    p = run_cli("unpack", tmp_path / "d" / "jetson-orin-nano-fp32.tar", "--dest", tmp_path / "board",
                env=_env(keys["pub"]))
    assert p.returncode == 0, p.stderr
    # a bad key fails at once, before any conversion, and writes nothing
    p = run_cli("export", TINY, "--target", "jetson", "--precision", "fp32", "--data", MINI, "--out", tmp_path / "e",
                "--sign", keys["pub"])
    assert_clean_error(p, "public key")
    assert not (tmp_path / "e").exists()


def test_bad_key_files_are_one_line_errors(tmp_path, bundle_copy):
    b = bundle_copy(BUNDLE)
    junk = tmp_path / "junk.pub"
    junk.write_bytes(os.urandom(200))
    empty = tmp_path / "empty.pub"
    empty.write_text("")
    rsa_like = tmp_path / "broken.pub"
    rsa_like.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    for f, why in [(junk, "not PEM"), (empty, "no PEM public key"), (rsa_like, "not readable"),
                   (tmp_path / "nope.pub", "not found")]:
        assert_clean_error(run_cli("verify", b, "--key", f), why)
    with pytest.raises(EdgeCXRError):
        sign_bundle(b, junk)


def test_a_board_venv_enforces_trusted_keys(bundle_copy, keys, tmp_path):
    """The board's own install (tflite-runtime, numpy 1.x, no torch) checks signatures too."""
    import subprocess

    from tests.conftest import ROOT

    py = ROOT / ".venv-board" / "bin" / "python"
    if not py.exists():
        if os.environ.get("CI"):
            raise RuntimeError(".venv-board is missing: CI must run `make test`")
        pytest.skip("no .venv-board: run `make board-setup`")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["EDGECXR_TRUSTED_KEYS"] = str(keys["pub"])
    signed, unsigned = bundle_copy("rpi-int8"), tmp_path / "unsigned"
    shutil.copytree(signed, unsigned)
    sign_bundle(signed, keys["key"])

    def board(*args):
        return subprocess.run([str(py), "-m", "edgecxr", *map(str, args)], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=600)

    p = board("predict", signed, IMAGE)
    assert p.returncode == 0 and "p(pneumonia)" in p.stdout, p.stderr
    assert_clean_error(board("predict", unsigned, IMAGE), "not signed")
