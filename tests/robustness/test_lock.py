"""The run lock creates its own file and never follows, truncates or replaces anything it did not make."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ddpm_core.training.lock import MARKER, RunLock
from ddpm_core.utils.errors import DDPMError
from tests.helpers import assert_clean_failure, run_cli

KEEP = b"keep this\n"


def _symlink(lock: Path, tmp_path: Path) -> Path:
    target = tmp_path / "keep.txt"
    target.write_bytes(KEEP)
    lock.symlink_to(target)
    return target


def _hard_link(lock: Path, tmp_path: Path) -> Path:
    target = tmp_path / "keep.txt"
    target.write_bytes(KEEP)
    os.link(target, lock)
    return target


def _own_file(lock: Path, tmp_path: Path) -> Path:
    lock.write_bytes(KEEP)
    return lock


def _fifo(lock: Path, tmp_path: Path) -> Path:
    os.mkfifo(lock)
    return lock


def _dev_null(lock: Path, tmp_path: Path) -> Path:
    lock.symlink_to("/dev/null")
    return lock


def _folder(lock: Path, tmp_path: Path) -> Path:
    lock.mkdir()
    (lock / "inside.txt").write_bytes(KEEP)
    return lock / "inside.txt"


FOREIGN = {
    "symlink": (_symlink, "symbolic link"),
    "hard-link": (_hard_link, "2 hard links"),
    "own-file": (_own_file, "other contents"),
    "fifo": (_fifo, "pipe, socket or device"),
    "dev-null": (_dev_null, "symbolic link"),
    "folder": (_folder, "is a folder"),
}


def _state(path: Path) -> tuple:
    info = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
    return stat.S_IFMT(info.st_mode), content


@pytest.mark.timeout(30)  # a FIFO that blocked an open would hang here
@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_lock_file_is_refused_by_name_and_left_as_it_was(kind, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / ".lock"
    make, words = FOREIGN[kind]
    kept = make(lock, tmp_path)
    before, lock_before = _state(kept), os.lstat(lock)
    with pytest.raises(DDPMError) as refused:
        RunLock(out).acquire()
    message = str(refused.value)
    assert str(lock) in message and words in message and "nothing was written" in message
    assert _state(kept) == before
    after = os.lstat(lock)
    assert (after.st_ino, after.st_mode, after.st_size) == (lock_before.st_ino, lock_before.st_mode,
                                                            lock_before.st_size)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["symlink", "own-file", "hard-link", "fifo"])
def test_train_refuses_a_foreign_lock_with_status_2_before_any_work(kind, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    kept = FOREIGN[kind][0](out / ".lock", tmp_path)
    code, output = run_cli(["train", "--out", str(out), "--epochs", "1", "--subset", "64", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(out / ".lock"), "not a lock file of this package")
    assert kind == "fifo" or kept.read_bytes() == KEEP
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_lock_file_left_by_an_earlier_run_is_taken_again(tmp_path):
    RunLock(tmp_path).acquire().release()
    lock = tmp_path / ".lock"
    assert lock.read_bytes() == MARKER  # released: the lock's own first line and no holder
    inode = lock.stat().st_ino
    with RunLock(tmp_path):
        assert lock.read_bytes() == MARKER + f"{os.getpid()}\n".encode()
    assert lock.stat().st_ino == inode  # the same file, never replaced
