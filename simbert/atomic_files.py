"""Files and directories written whole or not at all: `write_atomically` for one file,
`StagedDirectory` for a directory (a checkpoint, an index). Each is written under a
temporary name beside its destination and renamed into place, so a reader, or a process
killed mid-write, sees either what was there before or the new content in full.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Callable


def temporary_name(path: str) -> str:
    """A hidden name beside `path`, unique to this process and thread."""
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.{os.getpid()}-{threading.get_ident()}.tmp")


def replace_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write the file `path` through `write(temporary_path)` (for writers that take a path,
    such as safetensors'), then rename it into place: a failed write leaves whatever was
    at `path` before. Its directory is created if missing. The file gets the mode a new
    file gets here (0666 less the umask), whatever mode the writer gives it (safetensors
    writes 0600)."""
    path = os.path.abspath(str(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = temporary_name(path)
    try:
        open(temporary, "wb").close()  # created as any new file is: the umask applies
        mode = os.stat(temporary).st_mode & 0o777
        write(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_atomically(path: str | os.PathLike, write: Callable, binary: bool = False) -> None:
    """Write the file `path` through `write(file)`: its directory created if missing,
    written under a temporary name and renamed, so that a failed write leaves whatever
    was at `path` before.

    Args:
        path: the file to write.
        write: called with the open file (text, UTF-8; or binary with `binary=True`).
        binary: open the file in binary mode.

    Example:
        >>> write_atomically("out/scores.json", lambda writer: json.dump(scores, writer))
    """
    def write_file(temporary: str) -> None:
        with open(temporary, "wb" if binary else "w", encoding=None if binary else "utf-8") as writer:
            write(writer)

    replace_atomically(path, write_file)


def doomed_name(path: str) -> str:
    """The hidden name a directory is renamed to before it is deleted."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.removing-{os.getpid()}")


def delete(path: str) -> None:
    """Delete a directory, or the link to one."""
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_directory(path: str) -> None:
    """Remove a directory (or a link to one) as one step for its readers: renamed away
    first, then deleted."""
    doomed = doomed_name(path)
    os.replace(path, doomed)
    delete(doomed)


def is_leftover(name: str) -> bool:
    """Whether a directory entry is what a killed `StagedDirectory` or `remove_directory`
    left behind (a hidden `.tmp` or `.removing-` name)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".removing-" in name)


class StagedDirectory:
    """A directory built under a temporary name beside `path` and swapped into place by
    `commit()`: the directory at `path`, if any, is renamed away, the new one renamed
    in, the old one deleted (put back if the swap fails). `abort()` deletes the staged
    one. As a context manager it commits on success and aborts on an error.

    Args:
        path: the directory to write (replaced whole if it exists).

    Example:
        >>> with StagedDirectory("runs/x/checkpoint-0000100") as staging:
        ...     save_pretrained(backbone, staging.temporary, token_dict)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(str(path))
        self.temporary = temporary_name(self.path)
        shutil.rmtree(self.temporary, ignore_errors=True)
        os.makedirs(self.temporary)

    def commit(self) -> str:
        """Swap the staged directory into place; returns its path."""
        old = None
        if os.path.lexists(self.path):
            old = doomed_name(self.path)
            os.replace(self.path, old)
        try:
            os.replace(self.temporary, self.path)
        except BaseException:
            if old is not None:
                os.replace(old, self.path)  # the old directory back in place
            raise
        if old is not None:
            delete(old)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.temporary, ignore_errors=True)

    def __enter__(self) -> "StagedDirectory":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise
