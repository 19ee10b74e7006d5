"""The master key file and secrets sealed under it."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from connector.crypto import CryptoError, load_or_create_master_key, open_secret, seal_secret


def test_master_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    key = load_or_create_master_key(data_dir)
    path = data_dir / "master.key"
    assert len(key) == 32
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_master_key(data_dir) == key
    assert [p.name for p in data_dir.iterdir()] == ["master.key"]  # no temp files left


def test_env_value_wins_and_touches_no_file(tmp_path: Path) -> None:
    raw = os.urandom(32)
    assert load_or_create_master_key(tmp_path, base64.b64encode(raw).decode() + "\n") == raw
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    "value, match",
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(bytes(range(16))).decode(), "exactly 32 bytes, got 16"),
        (base64.b64encode(bytes(range(33))).decode(), "exactly 32 bytes, got 33"),
        ("", "got 0 bytes"),
    ],
)
def test_bad_env_value(tmp_path: Path, value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_or_create_master_key(tmp_path, value)


def test_damaged_key_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"too short")
    with pytest.raises(ValueError, match="9 bytes"):
        load_or_create_master_key(tmp_path)
    assert path.read_bytes() == b"too short"


def test_seal_open_round_trip() -> None:
    master = os.urandom(32)
    sealed = seal_secret(master, b"private key bytes", "identity.signing")
    assert sealed[0] == 1
    assert len(sealed) == 1 + 12 + len(b"private key bytes") + 16
    assert open_secret(master, sealed, "identity.signing") == b"private key bytes"
    assert seal_secret(master, b"x", "p") != seal_secret(master, b"x", "p")  # fresh nonce


def test_wrong_purpose_fails() -> None:
    master = os.urandom(32)
    sealed = seal_secret(master, b"secret", "identity.signing")
    with pytest.raises(CryptoError, match="wrong master key"):
        open_secret(master, sealed, "identity.exchange")


def test_wrong_master_key_fails() -> None:
    sealed = seal_secret(os.urandom(32), b"secret", "identity.signing")
    with pytest.raises(CryptoError, match="wrong master key"):
        open_secret(os.urandom(32), sealed, "identity.signing")


@pytest.mark.parametrize("sealed", [b"", b"\x01" + bytes(27), b"\x02" + bytes(40)])
def test_malformed_sealed_value(sealed: bytes) -> None:
    with pytest.raises(CryptoError, match="malformed"):
        open_secret(os.urandom(32), sealed, "p")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal_secret(b"short", b"x", "p")
    with pytest.raises(ValueError, match="purpose"):
        seal_secret(os.urandom(32), b"x", "")


def test_created_without_hard_link_support(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError("links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    key = load_or_create_master_key(tmp_path)
    path = tmp_path / "master.key"
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_losing_the_creation_race_uses_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = os.urandom(32)
    real_link = os.link

    def racing_link(src: str, dst: str) -> None:
        Path(dst).write_bytes(winner)  # another process got there first
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_or_create_master_key(tmp_path) == winner


def test_group_readable_key_file_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    load_or_create_master_key(tmp_path)
    assert "chmod 600" in caplog.text
