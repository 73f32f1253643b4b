"""Atomic file and directory writes, the one JSONL reader for user files, the one cross-process lock.

Every output distilltune writes (configs, metrics, checkpoints, reports, caches) goes through these
helpers so an interrupted process never leaves a file or directory that looks complete: content is
written to a temporary sibling and moved into place with ``os.replace`` (atomic on POSIX).

User-written JSONL files (task data, suites, patches, extra prompts) are parsed by
``read_jsonl_objects``, so every reader reports a bad line the same way (``FILE:LINE: ...``, all of
them at once). Builders of shared caches (the knowledge index, the teacher cache) serialise on
``file_lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distilltune.errors import ProblemList


def _default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp would leave 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it; True when written.

    Resumable steps (the flywheel's) re-run on unchanged inputs without touching their outputs."""
    path = Path(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (metrics logs); a torn last line is skipped by ``read_jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn last line of an interrupted run
    return rows


def read_jsonl_objects(path: str | os.PathLike, problems: ProblemList, source: str | None = None):
    """(line number, object) for each non-blank line of a user's JSONL file that holds a JSON object.

    Why one reader: the task loader, the guard's suites, sequence-level patches and extra prompts all
    read files a person wrote by hand, and each bad line must be reported the same way, all at once,
    with its line number. Unreadable files, malformed lines and non-objects go to ``problems`` (under
    ``source``, default the path); callers validate the objects' fields and report against the same line.
    """
    source = source or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problems.add(source, f"not UTF-8 text (byte {e.start})")
        return []
    except OSError as e:
        problems.add(source, f"cannot read the file: {e.strerror or e}")
        return []
    out: list[tuple[int, dict]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.add(source, f"malformed JSON: {e.msg} at column {e.colno}", lineno)
            continue
        if not isinstance(obj, dict):
            problems.add(source, f"expected a JSON object, found {type(obj).__name__}", lineno)
            continue
        out.append((lineno, obj))
    return out


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) across processes.

    Used by builders of content-addressed caches: concurrent builders of the same key wait here, then
    find the finished result and reuse it. The lock is released when the process exits, even on a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes.

    On an exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _FILE_MODE | ((_FILE_MODE & 0o444) >> 2))  # mkdtemp gives 0700; use the umask's mode
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
