"""A user's text files, read line by line as UTF-8: the one reader behind the data files,
the pair files and the command line's one-text-a-line inputs. A line that is not UTF-8
is named by file, line and byte, with the hint that the file may be GBK."""

from __future__ import annotations

import os
from typing import Callable, Iterator

from simbert.errors import FileFormatError, missing_path


class NotUTF8Error(FileFormatError):
    """A line of a text file that is not UTF-8; the message names the file, the line and
    the byte, and how to convert a GBK file."""

    def __init__(self, path: str | os.PathLike, line: int, message: str):
        super().__init__(path, "")
        self.line = line
        self.args = (message,)  # the message as the `on_error` function gets it


def not_utf8_message(path: str | os.PathLike, line: int, error: UnicodeDecodeError) -> str:
    """"`path`, line `line`: not UTF-8 (...; a GBK file? convert it with iconv ...)"."""
    return (f"{path}, line {line}: not UTF-8 ({error.reason} at byte {error.start}; a GBK file? "
            f"convert it with iconv -f gbk -t utf-8)")


def numbered_lines(path: str | os.PathLike, on_error: Callable[[str], None] | None = None,
                   what: str = "text file") -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 text file, numbered from 1.

    A byte-order mark at the start of the file is removed, and so is each line's ending
    (`\\n` or `\\r\\n`, so CRLF and LF files read the same); nothing else is stripped.

    Args:
        path: the file.
        on_error: None raises `NotUTF8Error` at the first line that is not UTF-8; a
            function gets that error's message instead (e.g. `readers.problem_handler`, which
            raises or counts it) and the line is left out, the next keeping its number.
        what: how a missing file is named in the error ("pair file", ...).

    Returns:
        An iterator of `(line number, line)`; it raises `FileNotFoundError` when the file
        does not exist.
    """
    if not os.path.exists(path):
        raise missing_path(what, path)
    with open(path, "rb") as reader:
        for number, raw in enumerate(reader, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                message = not_utf8_message(path, number, error)
                if on_error is None:
                    raise NotUTF8Error(path, number, message) from None
                on_error(message)
                continue
            yield number, line.rstrip("\r\n")


def read_texts(path: str | os.PathLike) -> Iterator[str]:
    """The texts of a one-text-a-line UTF-8 file: each line stripped, blank lines left out.

    Args:
        path: the file (see `numbered_lines` for its BOM, line endings and errors).

    Returns:
        An iterator of the non-blank lines, stripped.
    """
    return (text for text in (line.strip() for _, line in numbered_lines(path)) if text)
