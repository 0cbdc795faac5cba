"""atomic_file / atomic_write_text: the target holds the old or the new content, never a part; no temp left."""
import pytest

from wonderful_matrices.atomic import atomic_file, atomic_write_text


def test_writes_whole_files_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_file(target, "wb") as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_file(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"first" and [p.name for p in target.parent.iterdir()] == ["out.bin"]
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and len(list(target.parent.iterdir())) == 1
