"""`llm_backbones._fs`: the one atomic-write and containment implementation."""

from __future__ import annotations

import pytest

from llm_backbones import _fs


def test_atomic_dir_publishes_complete_and_leaves_nothing_beside(tmp_path) -> None:
    target = tmp_path / "out"
    with _fs.atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        (tmp / "a.txt").write_text("new", encoding="utf-8")
        assert not target.exists()  # nothing at the destination until the block ends
    assert (target / "a.txt").read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_atomic_dir_replaces_the_previous_version(tmp_path, monkeypatch, exchange) -> None:
    if not exchange:
        monkeypatch.setattr(_fs, "exchange", lambda a, b: False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    with _fs.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_that_fails_keeps_the_previous_version(tmp_path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="disk full"), _fs.atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("ha", encoding="utf-8")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_without_replace_keeps_what_another_writer_published(tmp_path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "winner.txt").write_text("first", encoding="utf-8")
    with pytest.raises(FileExistsError), _fs.atomic_dir(target, replace=False) as tmp:
        (tmp / "loser.txt").write_text("second", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["winner.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_text_atomic_replaces_the_file(tmp_path) -> None:
    path = tmp_path / "latest"
    path.write_text("step-1\n", encoding="utf-8")
    _fs.write_text_atomic(path, "step-2\n")
    assert path.read_text(encoding="utf-8") == "step-2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_siblings_lists_the_leftovers_of_one_destination(tmp_path) -> None:
    (tmp_path / ".ckpt.tmp-1a2b3c4d").mkdir()
    (tmp_path / ".ckpt.old-5e6f7a8b").mkdir()
    (tmp_path / ".other.tmp-00000000").mkdir()
    assert _fs.siblings(tmp_path / "ckpt", "tmp") == [tmp_path / ".ckpt.tmp-1a2b3c4d"]
    assert _fs.siblings(tmp_path / "ckpt", "old") == [tmp_path / ".ckpt.old-5e6f7a8b"]
    assert _fs.siblings(tmp_path / "absent" / "ckpt", "tmp") == []


@pytest.mark.parametrize(
    ("name", "inside"),
    [
        ("model.safetensors", True),
        ("sub/model-00001-of-00002.safetensors", True),
        ("../outside.safetensors", False),
        ("/tmp/outside.safetensors", False),
        ("sub/../../x.safetensors", False),
        ("sub/../x.safetensors", False),  # `..` is refused as written: `sub` could be a link
    ],
)
def test_is_inside_as_written(tmp_path, name, inside) -> None:
    assert _fs.is_inside(tmp_path, name, follow_symlinks=False) is inside


def test_is_inside_follows_symlinks_unless_told_not_to(tmp_path) -> None:
    checkpoint, elsewhere, blobs = tmp_path / "ckpt", tmp_path / "elsewhere", tmp_path / "blobs"
    for folder in (checkpoint, elsewhere, blobs):
        folder.mkdir()
    (checkpoint / "real.safetensors").write_bytes(b"")
    (checkpoint / "inner.safetensors").symlink_to(checkpoint / "real.safetensors")
    (checkpoint / "outer.safetensors").symlink_to(elsewhere / "x.safetensors")
    (checkpoint / "blob.safetensors").symlink_to(blobs / "abc")
    assert _fs.is_inside(checkpoint, "inner.safetensors")
    assert not _fs.is_inside(checkpoint, "outer.safetensors")
    assert _fs.is_inside(checkpoint, "outer.safetensors", follow_symlinks=False)
    assert not _fs.is_inside(checkpoint, "blob.safetensors")
    assert _fs.is_inside(checkpoint, "blob.safetensors", roots=[blobs])
    assert _fs.is_inside(checkpoint, "sub/../real.safetensors")  # resolved: `..` is applied, and stays inside
