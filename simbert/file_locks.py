"""An exclusive, advisory lock on a file path for one writer at a time (a training run
into its output directory, a write to an index directory).

The lock is an `flock` on a small file that holds the owner's PID for messages. The
kernel drops it when its process dies, so a lock file left by a killed process is stale
and is taken over (POSIX systems). A lock may delete its file when released: a process
that locked the file just as it was deleted finds that the path no longer names the file
it holds, and tries again on the new one, so two processes never hold one name.
"""

from __future__ import annotations

import contextlib
import os
import time

# Taking the lock is tried this often, this many seconds apart, before it is taken.
LOCK_ATTEMPTS = 10
LOCK_RETRY_S = 0.05


class FileLock:
    """An exclusive lock on `path` (created with its directory when first taken).

    Subclasses say whose lock it is by overriding `in_use(owner)`, the error raised when
    another live process holds it.

    Args:
        path: the lock file.
        remove: delete the file when the lock is released (else it stays, emptied).

    Example:
        >>> with FileLock("faq_index.lock"):
        ...     ...   # no other process holds it here
    """

    def __init__(self, path: str | os.PathLike, remove: bool = False):
        self.path = str(path)
        self.remove = remove
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def in_use(self, owner: str) -> RuntimeError:
        """The error for a lock held by the live process `owner` (a PID, or "unknown")."""
        return RuntimeError(f"{self.path} is held by another process (PID {owner})")

    def _error(self, file) -> RuntimeError:
        file.seek(0)
        return self.in_use(file.read().strip() or "unknown")

    def check_free(self) -> None:
        """Raise `in_use(...)` if another live process holds the lock; takes nothing and
        writes nothing (a missing lock file is free)."""
        import fcntl

        if self.held:
            return
        try:
            file = open(self.path, encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._error(file) from None
            fcntl.flock(file, fcntl.LOCK_UN)

    def acquire(self) -> None:
        """Take the lock, or raise `in_use(...)` naming the live process that holds it."""
        import fcntl

        if self.held:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for attempt in range(LOCK_ATTEMPTS):
            file = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if attempt == LOCK_ATTEMPTS - 1:
                    error = self._error(file)
                    file.close()
                    raise error from None
                file.close()
                time.sleep(LOCK_RETRY_S)  # perhaps another process's `check_free`, which lets go at once
                continue
            if self._names(file):
                break
            file.close()  # deleted by its last holder while this process locked it: lock the new file
        else:
            raise self.in_use("unknown")
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file

    def _names(self, file) -> bool:
        """Whether `self.path` still names the open `file`."""
        try:
            return os.path.samestat(os.stat(self.path), os.fstat(file.fileno()))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._file is not None:
            if self.remove:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)  # while still locked: see the module's docstring
            else:
                self._file.truncate(0)
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.release()
