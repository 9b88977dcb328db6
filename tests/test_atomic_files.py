"""Files and directories written whole or not at all."""

import os

import pytest

from simbert.atomic_files import StagedDirectory, is_leftover, remove_directory, replace_atomically, write_atomically


def test_a_staged_directory_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "checkpoint-1"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with StagedDirectory(target) as staging:
        assert is_leftover(os.path.basename(staging.temporary))
        with open(os.path.join(staging.temporary, "new.txt"), "w") as writer:
            writer.write("new")
        assert os.listdir(target) == ["old.txt"]  # readers see the old directory until the swap
    assert os.listdir(target) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["checkpoint-1"]


def test_a_failed_staged_directory_leaves_the_old_one_and_no_leftover(tmp_path):
    target = tmp_path / "index"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with StagedDirectory(target) as staging:
            open(os.path.join(staging.temporary, "half.txt"), "w").close()
            raise KeyboardInterrupt
    assert os.listdir(target) == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["index"]


def test_a_staged_directory_whose_swap_fails_puts_the_old_one_back(tmp_path, monkeypatch):
    target = tmp_path / "index"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = StagedDirectory(target)
    original = os.replace

    def failing(source, destination):
        if source == staging.temporary:
            raise OSError("disk full")
        return original(source, destination)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        with staging:
            pass
    monkeypatch.undo()
    assert os.listdir(target) == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["index"]


def test_a_file_written_by_path_or_by_handle_is_whole_or_absent(tmp_path):
    path = tmp_path / "sub" / "weights.bin"
    replace_atomically(path, lambda temporary: open(temporary, "wb").write(b"abc"))
    assert path.read_bytes() == b"abc"

    def torn(temporary):
        with open(temporary, "wb") as writer:
            writer.write(b"ab")
        raise OSError("killed")

    with pytest.raises(OSError, match="killed"):
        replace_atomically(path, torn)
    assert path.read_bytes() == b"abc" and os.listdir(tmp_path / "sub") == ["weights.bin"]
    write_atomically(path, lambda writer: writer.write(b"xyz"), binary=True)
    assert path.read_bytes() == b"xyz"


def test_a_removed_directory_is_gone_at_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    remove_directory(str(tmp_path / "a"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask_even_from_writers_that_set_0600(tmp_path, umask):
    """issue 31: safetensors' writer makes 0600 files; ours get 0666 less the umask, as
    any other file the process creates."""
    import numpy as np
    from safetensors.numpy import load_file

    from simbert.checkpoints import write_google_safetensors

    previous = os.umask(umask)
    try:
        write_google_safetensors({"bert/pooler/dense/bias": np.arange(3, dtype="float32")},
                                 tmp_path / "bert_model.safetensors")
        write_atomically(tmp_path / "notes.txt", lambda writer: writer.write("x"))
        open(tmp_path / "plain.txt", "w").close()
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for name in ("bert_model.safetensors", "notes.txt", "plain.txt"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == expected, name
    assert load_file(tmp_path / "bert_model.safetensors")["bert/pooler/dense/bias"].tolist() == [0, 1, 2]
