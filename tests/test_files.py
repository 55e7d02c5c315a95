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


def test_exclusive_lock_keeps_a_second_process_out_until_the_first_lets_go(tmp_path):
    import subprocess
    import sys

    from so3krates_openmm.files import LockedError, exclusive_lock

    path = tmp_path / "deep" / "run.lock"
    probe = ("import sys; from so3krates_openmm.files import LockedError, exclusive_lock\n"
             "try:\n    with exclusive_lock(sys.argv[1]): print('got it')\n"
             "except LockedError as error: print(error)")
    with exclusive_lock(path):
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True).stdout
        assert "another process holds" in out and str(path) in out
        with pytest.raises(LockedError):  # also a second holder in this process
            with exclusive_lock(path):
                pass
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True).stdout
    assert out.strip() == "got it"  # the lock file stays; the lock does not
