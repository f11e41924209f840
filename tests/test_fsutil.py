"""The one atomic write: whole file or old file, never half; modes; no overwrite of backups."""
from __future__ import annotations

import os
import stat

import pytest

from hugexml.core import fsutil


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "ledger.json"
    target.write_text("old")
    fsutil.write_atomic(str(target), b"new" * 100000, mode=0o600)
    assert target.read_bytes() == b"new" * 100000
    assert _mode(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["ledger.json"]


def test_keep_mode_and_default_umask(tmp_path):
    target = tmp_path / "hook"
    target.write_text("x")
    os.chmod(target, 0o751)
    fsutil.write_atomic(str(target), b"y", keep_mode=True)
    assert _mode(target) == 0o751
    fresh = tmp_path / "fresh"
    old = os.umask(0o027)
    try:
        fsutil.write_atomic(str(fresh), b"z")
    finally:
        os.umask(old)
    assert _mode(fresh) == 0o640


def test_exclusive_never_overwrites(tmp_path):
    target = tmp_path / "backup.xml"
    fsutil.write_atomic(str(target), b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        fsutil.write_atomic(str(target), b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["backup.xml"]


def test_failure_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "unit.mount"
    target.write_text("old")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        fsutil.write_atomic(str(target), b"new")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["unit.mount"]


def test_make_dirs(tmp_path):
    target = tmp_path / "a" / "b" / "c.prom"
    fsutil.write_atomic(str(target), b"m 1\n", make_dirs=True, dir_mode=0o700)
    assert target.read_bytes() == b"m 1\n"
    assert _mode(tmp_path / "a" / "b") == 0o700
