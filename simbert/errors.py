"""The errors simbert raises about a user's files and directories, each naming the path."""

from __future__ import annotations

import os


def missing_path(what: str, path: str | os.PathLike) -> FileNotFoundError:
    """`FileNotFoundError`: "`what` `path` does not exist"; a relative path also names the
    directory it was looked up from (recipes and commands read paths from the current
    directory, not from the recipe's)."""
    path = str(path)
    where = "" if os.path.isabs(path) else f" (looked up from the current directory {os.getcwd()})"
    return FileNotFoundError(f"{what} {path} does not exist{where}")


class DataError(ValueError):
    """A training record that cannot be read (the message names the file and line), or
    training data without a usable one."""


class NoUsableRecords(DataError):
    """Training data (or one file of it) in which no record can be used."""


class FileFormatError(ValueError):
    """A file that exists but cannot be read as the format expected (truncated, corrupt,
    another format); the message names the file and what was expected."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


def unreadable(path: str | os.PathLike, expected: str, error: BaseException) -> FileFormatError:
    """`FileFormatError` for `path`, which should be `expected`, from the reader's own error."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return FileFormatError(path, f"cannot be read as {expected} ({type(error).__name__}: {detail})")


def output_problem(what: str, path: str | os.PathLike, directory: bool = False) -> OSError | None:
    """Why `path` cannot be written as `what` (a file, or a directory when `directory`),
    as an `OSError` naming it, or None when it can: an existing path of the other kind, an
    ancestor that is a file, or a nearest existing directory that is not writable."""
    path = str(path)
    if os.path.exists(path) and os.path.isdir(path) != directory:
        expected, found = ("a directory", "a file") if directory else ("a file", "a directory")
        return (IsADirectoryError if found == "a directory" else NotADirectoryError)(
            f"{what} {path} is {found}; expected {expected} to write (choose another path)")
    if directory and os.path.isdir(path):  # written into, not replaced beside
        if not os.access(path, os.W_OK | os.X_OK):
            return PermissionError(f"{what} {path} cannot be written: no permission to write in it")
        return None
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return NotADirectoryError(f"{what} {path} cannot be written: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return PermissionError(f"{what} {path} cannot be written: no permission to write in {ancestor}")
    return None
