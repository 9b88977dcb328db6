"""One writer at a time: `FileLock` refuses a second holder naming the first, takes over a
dead holder's lock, and (with `remove`) deletes its file without letting two processes
hold one name."""

import os

import pytest

from helpers import lock_held_elsewhere
from simbert.file_locks import FileLock


class Taken(RuntimeError):
    pass


class NamedLock(FileLock):
    def in_use(self, owner):
        return Taken(f"held by PID {owner}")


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    first, second = NamedLock(tmp_path / "a.lock"), NamedLock(tmp_path / "a.lock")
    with first:
        assert (tmp_path / "a.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(Taken, match=f"held by PID {os.getpid()}$"):
            second.acquire()
        with pytest.raises(Taken):
            second.check_free()
    assert (tmp_path / "a.lock").read_text() == ""  # kept, emptied
    second.check_free()
    with second:
        assert second.held


def test_a_removed_lock_file_is_not_held_twice(tmp_path):
    path = tmp_path / "index.lock"
    first = NamedLock(path, remove=True)
    first.acquire()
    # A process that opened the file just before `first` deleted it ends up locking a file
    # no longer named by the path: it must notice and lock the path's new file instead.
    stale = open(path, "a+")
    first.release()
    assert not path.exists()
    import fcntl
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the deleted inode is free to lock
    second, third = NamedLock(path, remove=True), NamedLock(path, remove=True)
    second.acquire()
    with pytest.raises(Taken):
        third.acquire()
    stale.close()
    second.release()
    assert not path.exists()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    with lock_held_elsewhere("simbert.file_locks.FileLock", path) as holder:
        with pytest.raises(Taken, match=f"held by PID {holder.pid}$"):
            NamedLock(path).acquire()
    with NamedLock(path) as lock:
        assert lock.held and path.read_text().strip() == str(os.getpid())
