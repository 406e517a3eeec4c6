"""Files written so a crash never leaves half an output: temporary siblings renamed into place.

Every writer of nova uses these (GGUF import, merge, export, checkpoints, adapters, run state):
a reader sees either the old output or the complete new one. Sizes (``GiB``, ``human_bytes``)
live here too, so one definition serves every module.

The same code runs on Windows, where two things differ: a rename onto an existing directory
fails (so ``replace_path`` moves the old one aside first), and a file another process has open
(``nova status`` reading ``nova.pid``, an antivirus scan, an editor) cannot be renamed or
deleted for a moment (a sharing violation), so renames and deletes retry for a few seconds
before saying which file is held. Files are always closed before they are renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from nova.errors import NovaError

GiB = 1024**3
MiB = 1024**2

T = TypeVar("T")

# Windows error codes of a file held open by another process: ERROR_ACCESS_DENIED (5, also given
# for a file pending deletion) and ERROR_SHARING_VIOLATION (32). Anywhere else a PermissionError
# is a real permission problem and is raised at once.
SHARING_VIOLATIONS = frozenset({5, 32})
RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # about 3 s in all: longer than a scan or a status read


def is_sharing_violation(exc: BaseException) -> bool:
    return isinstance(exc, PermissionError) and getattr(exc, "winerror", None) in SHARING_VIOLATIONS


def retry_while_held(op: Callable[[], T], path: Path, what: str = "replace") -> T:
    """Run ``op`` (a rename or delete of ``path``), retrying while another process holds the file.

    Bounded: after ``RETRY_DELAYS_S`` a file still held is a NovaError naming it, not a hang.
    """
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return op()
        except PermissionError as exc:
            if not is_sharing_violation(exc):
                raise
            if delay is None:
                raise NovaError(f"cannot {what} {path}: another program has it open (Windows error "
                                f"{getattr(exc, 'winerror', '?')})",
                                hint="close what holds it (an editor, a file viewer, a virus scan) and run "
                                "again") from None
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def rename(src: Path, dest: Path) -> None:
    """``os.replace`` (atomic, and replaces a file on Windows too, unlike ``Path.rename``), retried while held."""
    retry_while_held(lambda: os.replace(src, dest), Path(dest))


def remove_file(path: Path) -> None:
    """Delete a file if it exists, retried while another process holds it."""
    retry_while_held(lambda: Path(path).unlink(missing_ok=True), Path(path), "delete")


def remove_tree(path: Path) -> None:
    """Delete a directory tree, best effort: on Windows clears the read-only attribute (which blocks
    deletion there) and waits out files held open; leaves what still cannot go (never raises)."""
    from nova.system import on_windows

    def again(func: Callable[..., Any], name: str, _exc: Any) -> None:
        with contextlib.suppress(OSError, NovaError):
            if on_windows():
                os.chmod(name, stat.S_IWRITE)
            retry_while_held(lambda: func(name), Path(name), "delete")

    if not Path(path).exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=again)
    else:  # the 3.10/3.11 spelling of the same callback
        shutil.rmtree(path, onerror=again)


_WINDOWS_ROOT = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # d:\ or d:/, or a UNC \\server\share


def looks_like_local_path(text: str) -> bool:
    """A local path rather than a hub id: ./x, /x, ~/x, a Windows path (d:\\x, d:/x, \\\\server\\x, a\\b), or
    owner/name whose first component is a local directory (``mydata/chats`` where ``mydata/`` exists: a
    mistyped local path, never a hub request)."""
    if text.startswith((".", "/", "~")) or bool(_WINDOWS_ROOT.match(text)) or "\\" in text:
        return True
    first = text.split("/", 1)[0]
    return "/" in text and first not in ("", "..") and Path(first).is_dir()


def did_you_mean(text: str) -> str | None:
    """The entry beside a missing path whose name is closest to it (``models/smollm2`` for
    ``models/smolm2``, ``data/chat.jsonl`` for ``data/chats``), spelled as the user wrote the directory;
    None when the directory does not exist or nothing is close."""
    import difflib

    path = Path(text).expanduser()
    parent = path.parent
    try:
        names = [p.name for p in parent.iterdir()][:10_000] if parent.is_dir() else []
    except OSError:
        return None
    stems = {n.split(".", 1)[0] if not n.startswith(".") else n: n for n in names}
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6) or \
        [stems[s] for s in difflib.get_close_matches(path.name.split(".", 1)[0], list(stems), n=1, cutoff=0.6)]
    if not close:
        return None
    head, sep, _ = text.rstrip("/\\").rpartition("/")
    return f"{head}{sep}{close[0]}"


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path`` (a file: its size; missing: 0)."""
    path = Path(path)
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (ASCII, powers of 1024)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def check_output_dir(out_dir: Path, force: bool, *, marker: str | None = None) -> None:
    """Refuse to overwrite a non-empty directory (or any file) unless ``force``.

    With ``marker`` (the provenance file nova writes into such an output), ``force`` replaces only a
    directory that holds it: one nova wrote. A typo'd ``--out ~/models --force`` must not delete a
    directory of someone's own files.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NovaError(f"output exists and is not a directory: {out_dir}", hint="choose another --out")
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        return
    if not force:
        raise NovaError(f"output directory is not empty: {out_dir}",
                        hint="choose another --out, or pass --force to replace it")
    if marker is not None and not (out_dir / marker).is_file():
        raise NovaError(f"{out_dir} is not empty and was not written by nova (no {marker}); --force replaces "
                        "only an earlier nova output", hint="choose another --out, or move the directory away")


def check_output_file(out: Path, force: bool) -> None:
    """Refuse to overwrite a file output (a .gguf) unless ``force``, and never a directory in its place."""
    if out.is_dir():
        raise NovaError(f"output is a directory: {out}", hint="--out names the .gguf file to write")
    if out.exists() and not force:
        raise NovaError(f"output exists: {out}", hint="choose another --out, or pass --force to replace it")


def portable_path(path: str | Path, base: Path) -> str:
    """``path`` as recorded in a file that travels with the output ``base``: relative to ``base``, or
    the bare name when the two share nothing below the root (``../../tmp/x`` would spell the
    absolute path). A model shipped to someone else must not carry this machine's directory names.
    """
    target, home = Path(path).expanduser().resolve(), Path(base).expanduser().resolve()
    try:
        common = Path(os.path.commonpath([target, home]))
    except ValueError:  # different drives (Windows)
        return target.name
    if common == Path(common.anchor):
        return target.name
    return os.path.relpath(target, home)


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside ``path`` that no other process of nova uses at the same time."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{int(time.time() * 1000)}"


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old)-(?P<pid>\d+)-\d+$")


def clean_stale_siblings(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` that a killed nova left (a merge, an export or a data cache
    save killed half-way leaves hundreds of MB behind); returns what was cleaned.

    Only nova's own names (``.<name>.tmp-<pid>-<ms>``, ``.<name>.old-<pid>-<ms>``) beside ``path``, and
    only when their process is gone. An ``old`` sibling with nothing at ``path`` is the only copy of the
    earlier output (the kill came between the two renames of ``replace_path``): it is put back.
    """
    from nova.system import process_alive

    path = Path(path)
    cleaned: list[Path] = []
    try:
        entries = [e for e in path.parent.iterdir() if e.name.startswith(f".{path.name}.")]
    except OSError:
        return cleaned
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match["name"] != path.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or process_alive(pid):
            continue
        with contextlib.suppress(OSError, NovaError):
            if match["tag"] == "old" and not (path.exists() or path.is_symlink()):
                rename(entry, path)
            elif entry.is_dir() and not entry.is_symlink():
                remove_tree(entry)
            else:
                remove_file(entry)
            cleaned.append(entry)
    return cleaned


@contextlib.contextmanager
def atomic_dir(out_dir: Path, force: bool = True, *, check: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` and move it into place only if the block succeeds.

    A crash or Ctrl-C leaves the old output (or nothing) in place, never a half-written model that
    a later run would mistake for a good one; what a killed earlier run left beside it is cleaned up
    first. ``check`` refuses a non-empty ``out_dir`` unless ``force``.
    """
    clean_stale_siblings(out_dir)
    if check:
        check_output_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_path(tmp, out_dir)
    finally:
        remove_tree(tmp)


def replace_path(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing what is there with as short a gap as rename allows.

    What is at ``dest`` is moved aside first: POSIX renames only onto an empty directory and
    Windows onto no directory at all. A failed move puts the old one back.
    """
    old = None
    if dest.exists():
        old = temp_sibling(dest, "old")
        rename(dest, old)
    try:
        rename(src, dest)
    except (OSError, NovaError):
        if old is not None:
            rename(old, dest)
        raise
    fsync_dir(dest.parent)
    if old is not None:
        if old.is_dir():
            remove_tree(old)
        else:
            with contextlib.suppress(OSError, NovaError):
                remove_file(old)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable; best effort where unsupported."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and the directories themselves (before sealing or renaming)."""
    for p in sorted(Path(path).rglob("*"), reverse=True):
        if p.is_file():
            fsync_file(p)
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(Path(path))


def fsync_file(path: Path) -> None:
    """Flush a closed file to disk. Windows flushes only through a handle opened for writing."""
    from nova.system import on_windows

    try:
        with Path(path).open("r+b" if on_windows() else "rb") as fh:
            os.fsync(fh.fileno())
    except PermissionError:
        if not on_windows():
            raise  # a read-only file on Windows cannot be opened for writing: it is not flushed


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:  # the same bytes on every platform
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        rename(tmp, path)  # closed first: Windows cannot rename an open file
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError, NovaError):
            remove_file(tmp)


def write_status_file(path: Path, text: str) -> None:
    """Replace a small status file that is rewritten every second and means nothing after a crash
    (``activity.json``): temporary sibling then rename, so a reader never sees half of it, but no fsync."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        rename(tmp, path)
    finally:
        with contextlib.suppress(OSError, NovaError):
            remove_file(tmp)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see ``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- filesystem faults as one clear line

# How torch and safetensors report a failed write (they raise RuntimeError or their own error, not OSError).
_DISK_FULL = ("No space left on device", "StorageFull", "file write failed", "unexpected pos", "Disk quota exceeded")
_READ_ONLY = ("Read-only file system", "ReadOnlyFilesystem")


def os_error(exc: BaseException, path: str | Path | None = None) -> NovaError | None:
    """A filesystem fault as a NovaError naming the path and the fix, or None when it is not one.

    Besides OSError by errno, the errors torch and safetensors raise for a failed write (a full disk
    reaches them as "file write failed", "unexpected pos" or "StorageFull") count, with ``path``
    as the place (they do not name it).
    """
    import errno

    where = str(getattr(exc, "filename", None) or path or "a file")
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and any(s in text for s in _DISK_FULL)):
        return NovaError(f"the disk is full: cannot write {where}{_free(where)}",
                         hint="free space on that disk, or point the output at another one; then run again")
    if code == errno.EROFS or (code is None and any(s in text for s in _READ_ONLY)):
        return NovaError(f"{where} is on a read-only filesystem", hint="choose a writable location for the output")
    if code in (errno.EACCES, errno.EPERM):
        return NovaError(f"permission denied: {where}", hint="check its permissions, or choose another location")
    if code == errno.ENAMETOOLONG:
        return NovaError(f"the path is too long for this filesystem ({len(where)} characters): {where[:120]}...",
                         hint="use a shorter output_dir, logs_dir or name (a name may have at most 255 bytes)")
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return NovaError(f"{where}: {_kind_clash(Path(where))}", hint="choose another path, or move that file away")
    if code == errno.ENOENT and isinstance(exc, FileNotFoundError):
        return NovaError(f"{where} does not exist (it may have been deleted while nova ran)",
                         hint="check the path, then run again")
    return None


def _free(where: str) -> str:
    for parent in Path(where).parents:
        with contextlib.suppress(OSError):
            return f" ({human_bytes(shutil.disk_usage(parent).free)} free there)"
    return ""


def _kind_clash(path: Path) -> str:
    """What stands in the way: a file where a directory is needed (itself or a parent), or the reverse."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir() and part != path:
            return f"{part} is a file, not a directory"
    if path.exists() and not path.is_dir():
        return "a file stands where a directory is needed"
    if path.is_dir():
        return "a directory stands where a file is needed"
    return "a file or directory is in the way"


def check_writable_dir(path: str | Path, what: str) -> None:
    """Before a run writes anything: ``path`` (a directory, made if missing) can be one and can be written.

    A file in its place or above it, a name past the filesystem's limit, or a read-only or foreign
    parent is one line naming ``what`` (the config key) now, instead of a fault minutes later.
    """
    import errno

    target = Path(path).expanduser().absolute()
    for name in target.parts:
        if len(name.encode("utf-8", "surrogateescape")) > 255:
            raise NovaError(f"{what}: the name {name[:40]}... in it is {len(name)} characters; a name may "
                            "have at most 255 bytes", hint=f"use a shorter {what}")
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "a device or special file"
        raise NovaError(f"{what} {target}: {existing} is {kind}, not a directory", hint=f"choose another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        err = errno.EROFS if _read_only(existing) else errno.EACCES
        problem = os_error(OSError(err, os.strerror(err), str(existing)))
        if problem is not None:
            raise NovaError(f"{what} {target}: {problem.message}", hint=problem.hint)


def _read_only(path: Path) -> bool:
    from nova.system import read_only_filesystem

    return read_only_filesystem(path)
