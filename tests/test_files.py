"""atomic_path / write_atomic: the file appears whole or not at all."""

from __future__ import annotations

import pytest

from cliptune.files import atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.md"
    write_atomic(path, "first")
    write_atomic(path, b"second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "trials.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path, durable=True) as temp:
        assert temp.suffix == ".csv" and temp.parent == tmp_path
        temp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]


def test_the_file_gets_the_permissions_a_plain_write_gives(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    write_atomic(tmp_path / "atomic.json", "{}")
    assert (tmp_path / "atomic.json").stat().st_mode == plain.stat().st_mode
