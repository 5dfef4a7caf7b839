"""Atomic writes: whole files only, and the user's umask (not mkstemp's 0600) on what they leave."""

from __future__ import annotations

import os
import stat

import pytest

from cft_utils.io import atomic_path, current_umask, write_json, write_jsonl, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_results_are_group_and_world_readable_under_umask_022(tmp_path, umask_022):
    assert current_umask() == 0o022
    paths = [write_text(tmp_path / "a" / "t.txt", "x"), write_json(tmp_path / "a" / "j.json", {"k": 1}),
             write_jsonl(tmp_path / "b" / "r.jsonl", [{"k": 1}])]
    with atomic_path(tmp_path / "c" / "f.csv", suffix=".csv") as tmp:
        tmp.write_text("a,b\n")
    paths.append(tmp_path / "c" / "f.csv")
    for p in paths:
        assert _mode(p) == 0o644, (p, oct(_mode(p)))
    for d in ("a", "b", "c"):
        assert _mode(tmp_path / d) == 0o755


def test_a_directory_written_through_atomic_path_gets_the_umask(tmp_path, umask_022):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.unlink()
        (tmp / "sub").mkdir(parents=True, mode=0o700)
        (tmp / "sub" / "w.bin").write_bytes(b"1")
        os.chmod(tmp / "sub" / "w.bin", 0o600)
    assert _mode(target) == 0o755 and _mode(target / "sub") == 0o755
    assert _mode(target / "sub" / "w.bin") == 0o644


def test_a_stricter_umask_is_honoured(tmp_path):
    old = os.umask(0o077)
    try:
        p = write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(p) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = write_text(tmp_path / "t.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["t.txt"]
