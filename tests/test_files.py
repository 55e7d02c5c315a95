"""The one atomic file writer: the old file or the new one, never a half-written one or a stray temporary."""

from __future__ import annotations

import pytest

from so3krates_openmm.files import write_atomically


def test_bytes_text_and_writer_functions(tmp_path):
    path = tmp_path / "new_folder" / "out.json"
    assert write_atomically(path, b"{}") == path and path.read_bytes() == b"{}"
    write_atomically(path, "{\"å\": 1}")
    assert path.read_text(encoding="utf-8") == "{\"å\": 1}"
    seen = []

    def writer(temporary):
        seen.append(temporary)
        temporary.write_text("written by a function")

    write_atomically(path, writer)
    assert path.read_text() == "written by a function"
    assert seen[0].parent == path.parent and seen[0].suffix == ".json" and seen[0] != path
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def fails_half_way(temporary):
        temporary.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomically(path, fails_half_way)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
