"""The one UTF-8 line reader: BOM and line endings, numbering, and a line that is not
UTF-8 named by file and line with the GBK hint (raised, or handed to `on_error` and left
out)."""

import pytest

from simbert.errors import FileFormatError
from simbert.text_files import NotUTF8Error, numbered_lines, read_texts


def gbk_file(path):
    """Line 1 UTF-8 with a BOM and CRLF, line 2 GBK, line 3 blank, line 4 UTF-8."""
    path.write_bytes("\ufeff花呗怎么还款 \r\n".encode("utf-8") + "花呗如何还\n".encode("gbk")
                     + b"\n" + "  借呗额度\t\n".encode("utf-8"))
    return path


def test_bom_and_line_endings_are_removed_and_nothing_else(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes("\ufeff甲 \r\n\r\n  乙\t\n丙".encode("utf-8"))
    assert list(numbered_lines(path)) == [(1, "甲 "), (2, ""), (3, "  乙\t"), (4, "丙")]
    assert list(read_texts(path)) == ["甲", "乙", "丙"]


def test_a_gbk_line_raises_naming_the_file_and_line_with_the_hint(tmp_path):
    path = gbk_file(tmp_path / "gbk.txt")
    lines = numbered_lines(path)
    assert next(lines) == (1, "花呗怎么还款 ")
    with pytest.raises(NotUTF8Error) as caught:
        next(lines)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 2: not UTF-8 (")
    assert "a GBK file?" in message and "iconv -f gbk -t utf-8" in message
    assert isinstance(caught.value, FileFormatError) and caught.value.path == str(path) and caught.value.line == 2
    with pytest.raises(NotUTF8Error, match=r", line 2: not UTF-8"):
        list(read_texts(path))


def test_on_error_gets_the_message_and_the_line_is_left_out(tmp_path):
    path = gbk_file(tmp_path / "gbk.txt")
    messages = []
    expected = [(1, "花呗怎么还款 "), (3, ""), (4, "  借呗额度\t")]
    assert list(numbered_lines(path, messages.append)) == expected
    assert len(messages) == 1 and messages[0].startswith(f"{path}, line 2: not UTF-8 (") and "GBK" in messages[0]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pair file .*absent\.tsv does not exist"):
        next(numbered_lines(tmp_path / "absent.tsv", what="pair file"))
