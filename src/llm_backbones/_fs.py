"""Filesystem helpers every layer may use: atomic writes, and whether a file lies inside a directory.

Atomic writes: the file or directory is written under a hidden temporary name beside its destination (same
filesystem, so the final rename is atomic), flushed to disk, renamed into place, and the parent directory is
flushed too, so a write that is interrupted (killed, out of disk, power loss) leaves the previous version
intact and readers never see a half-written one. `atomic_dir` does it for a directory (`save_backbone`, the
embedded model's weights, via `publish_dir` a training checkpoint), `write_text_atomic` for one file.

Containment: `is_inside` tells whether a file named in a checkpoint lies inside its directory, with symlinks
followed (files on disk) or judged on the name as written (names of files not downloaded yet).

A foundation module: it imports only the standard library and `llm_backbones.errors`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from llm_backbones.errors import OutputPathError

logger = logging.getLogger(__name__)


# === Destinations ===
def make_parent(target: Path, name: str | None = None) -> None:
    """Create the folder `target` will be written into; where a file stands in the way, `OutputPathError`
    naming `name` (default: the path) and the fix."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputPathError(
            f"Cannot create the folder of {name or target}: {exc}. Choose a path under a folder."
        ) from exc


# === Temporary names beside a destination ===
def sibling(target: Path, kind: str) -> Path:
    """A fresh hidden name beside `target`: `.<name>.<kind>-<8 hex digits>` ("tmp": being written, "old": the
    replaced version, between the two renames of `publish_dir` where no atomic exchange exists)."""
    return target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"


def siblings(target: Path, kind: str) -> list[Path]:
    """The `sibling(target, kind)` paths that exist, sorted: what interrupted writes left behind."""
    return sorted(target.parent.glob(f".{target.name}.{kind}-*")) if target.parent.is_dir() else []


def new_temp_dir(target: Path, *, mode: int = 0o777) -> Path:
    """A new empty directory beside `target` (`sibling(target, "tmp")`), made with `mode` (less the umask)."""
    for _ in range(100):
        tmp = sibling(target, "tmp")
        try:
            tmp.mkdir(mode=mode)
            return tmp
        except FileExistsError:
            continue
    raise OutputPathError(f"Could not create a temporary directory beside {target}.")


# === Flushing to disk ===
def fsync_dir(directory: Path) -> None:
    """Flush `directory` itself (its entries: a rename into it, a new file) to disk; a no-op on Windows."""
    if sys.platform == "win32":  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file of `directory` (recursively), then the directory itself, to disk."""
    for file in directory.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(directory)


# === Publishing ===
def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, and replace `path` in one step."""
    tmp = sibling(path, "tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux `renameat2(RENAME_EXCHANGE)`); False where that is unavailable."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a libc without renameat2
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or filesystem without exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_dir(tmp: Path, target: Path, *, replace: bool = True) -> None:
    """Make the finished directory `tmp` appear at `target` in one step, then flush `target`'s parent.

    An existing `target` (other than an empty directory) is, with `replace`, swapped out (on Linux one atomic
    exchange, elsewhere two renames with the previous version at `sibling(target, "old")` in between) and
    deleted; without `replace` it stays, `tmp` too, and `FileExistsError` is raised (another writer won).
    """
    if not replace or not target.exists():
        try:
            os.rename(tmp, target)
            fsync_dir(target.parent)
            return
        except OSError as exc:  # another writer created `target` in the meantime
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not replace:
                raise FileExistsError(errno.EEXIST, "already exists", str(target)) from exc
    if exchange(tmp, target):
        _remove_previous(tmp, target)  # it now holds the previous version
    else:
        # Two renames: between them `target` is missing and the previous version is at `backup`
        # (load_backbone names it if that moment is ever interrupted).
        backup = sibling(target, "old")
        os.rename(target, backup)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(backup, target)
            raise
        _remove_previous(backup, target)
    fsync_dir(target.parent)


def _remove_previous(directory: Path, target: Path) -> None:
    """Delete the replaced version; the write has succeeded, so failing to delete it is only a warning."""
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        logger.warning(
            "The new %s is in place, but the previous one, now at %s, could not be deleted (%s). Delete it "
            "by hand.",
            target,
            directory,
            exc,
        )


@contextlib.contextmanager
def atomic_dir(target: Path, *, replace: bool = True, mode: int = 0o777) -> Iterator[Path]:
    """Write a directory that appears at `target` complete or not at all.

    Yields a new empty directory beside `target` (`new_temp_dir`) to write into. When the block ends without
    error, its files are flushed to disk and it is published at `target` (`publish_dir`, which says what
    `replace` does). The temporary directory is gone afterwards whatever happened, except where the process
    is killed meanwhile: then it stays as `.<name>.tmp-*` (`siblings(target, "tmp")`).
    """
    tmp = new_temp_dir(target, mode=mode)
    try:
        yield tmp
        fsync_tree(tmp)
        publish_dir(tmp, target, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange it held the previous version


# === Containment ===
def is_inside(
    directory: Path, name: str, *, follow_symlinks: bool = True, roots: Iterable[Path] = ()
) -> bool:
    """Whether the file `name` of `directory` lies inside it.

    With `follow_symlinks`, `directory / name` is resolved (every symlink followed, `..` applied) and must be
    `directory` or lie under it, or under one of `roots` (other places its files may be, such as a hub
    cache snapshot's blob store), these resolved too. Without, only the name as written is judged and nothing
    is read from disk (names of files not downloaded yet, or of a layout whose links are trusted): it must be
    relative and have no `..` part, read as a POSIX path and as one of this system.
    """
    if not follow_symlinks:
        posix, native = PurePosixPath(name), Path(name)
        escapes = posix.is_absolute() or native.is_absolute() or ".." in posix.parts or ".." in native.parts
        return not escapes
    target = (directory / name).resolve()
    allowed = [directory.resolve(), *(root.resolve() for root in roots)]
    return any(target == root or target.is_relative_to(root) for root in allowed)
