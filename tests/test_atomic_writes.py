"""Every file dmltune writes is replaced in one step (``dmltune.atomic``), and a full disk at any of
those writes is one line that keeps the previous file whole (issue #27)."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from dmltune import atomic, cli
from synthetic_study import write_study_dir

PACKAGE = Path(__file__).resolve().parents[1] / "dmltune"
WRITE = re.compile(r"\.write_text\(|\.write_bytes\(|\.to_csv\(|\.to_parquet\(|savefig\(|torch\.save\(|"
                   r"open\([^)]*[\"'][wax]b?\+?[\"']|copytree\(|copyfile\(")
NOT_A_REPLACEMENT = {  # writes that replace no file a reader could see half of, and why
    ("study/disk.py", "open(probe"): "a probe of free space, removed at once",
    ("study/runner.py", "probe.write_text"): "a probe that the folder is writable, removed at once",
    ("study/lifecycle.py", 'open(self.path, "a+"'): "the folder's lock file, held open, never read as data",
    ("study/result_ledger.py", 'path.open("a")'): "an append-only ledger of whole lines (a torn last line is skipped)",
    ("study/state_copy.py", "shutil.copyfile(path, folder"): "a hidden copy renamed into place afterwards",
    ("study/consolidate.py", "table.to_parquet(parquet"): "into memory; the bytes go through write_atomic",
    ("study/consolidate.py", "table.to_csv(index=False)"): "into memory; the text goes through write_atomic",
    ("analysis/report.py", "frame.to_csv(index=False)"): "into memory; the text goes through write_atomic",
}


def test_every_write_in_the_package_goes_through_a_partial_file():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "atomic.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if not WRITE.search(code) or "partial" in code or "staging" in code:
                continue
            if any(rel == where and mark in code for (where, mark) in NOT_A_REPLACEMENT):
                continue
            offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "write through dmltune.atomic (write_atomic / replacing):\n" + "\n".join(offenders)


def test_the_lint_above_sees_a_direct_write():
    assert WRITE.search('path.write_text("x")') and WRITE.search('fig.savefig(folder / "a.png")')
    assert WRITE.search('with open(p, "w") as f:') and WRITE.search("torch.save(state, path)")
    assert not WRITE.search("path.read_text()")


def test_replacing_renames_only_a_whole_new_version(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(path) as partial:
            partial.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and not atomic.partial_path(path).exists()
    atomic.partial_path(path).write_text("left by a killed writer")
    atomic.write_atomic(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_whole(tmp_path):
    folder = tmp_path / "latest"
    folder.mkdir()
    (folder / "a").write_text("old")
    with pytest.raises(OSError):
        with atomic.replacing(folder) as partial:
            partial.mkdir()
            (partial / "a").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (folder / "a").read_text() == "old"
    with atomic.replacing(folder) as partial:
        partial.mkdir()
        (partial / "a").write_text("new")
    assert (folder / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def full_disk(monkeypatch, cls, name):
    """``cls.name`` writes a little of what it was given, then fails as a full disk does."""
    real = getattr(cls, name)

    def write(self, *args, **kwargs):
        target = Path(args[0]) if name == "savefig" else self
        target.write_bytes(b"half") if name == "savefig" else real(self, "half")
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(cls, name, write)


def test_a_full_disk_while_the_report_is_written_keeps_the_old_report_and_says_one_line(tmp_path, monkeypatch,
                                                                                         capsys):
    folder = write_study_dir(tmp_path / "study", analysis={"reference": "ddtas", "delta": 0.01})
    assert cli.main(["report", str(folder), "--no-figures"]) == 0
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    capsys.readouterr()
    with monkeypatch.context() as m:
        full_disk(m, Path, "write_text")
        assert cli.main(["report", str(folder), "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("dmltune: error: no space left on ") and "Traceback" not in err
    assert ".partial" not in err and str(folder / "tables") in err, err  # names the file it was replacing
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before  # every earlier file whole, no partial file left


def test_a_full_disk_while_a_figure_is_drawn_keeps_the_old_figure(tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    folder = write_study_dir(tmp_path / "study", analysis={"reference": "ddtas", "delta": 0.01})
    assert cli.main(["report", str(folder)]) == 0
    png = folder / "figures" / "best_so_far.png"
    before = png.read_bytes()
    capsys.readouterr()
    with monkeypatch.context() as m:
        full_disk(m, Figure, "savefig")
        assert cli.main(["report", str(folder)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no space left on " in err and ".partial" not in err, err
    assert png.read_bytes() == before and not list(folder.rglob("*.partial"))


def test_a_checkpoint_scratch_folder_left_by_a_killed_worker_is_removed(tmp_path, monkeypatch):
    import subprocess
    import tempfile

    from dmltune.training import state

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = tmp_path / f"{state.SCRATCH_PREFIX}{gone.pid}-abc"   # its process was killed mid-report
    alive = tmp_path / f"{state.SCRATCH_PREFIX}{__import__('os').getppid()}-def"  # a running process's
    for folder in (orphan, alive):
        folder.mkdir()
        (folder / state.CHECKPOINT_FILE).write_bytes(b"x")
    monkeypatch.setattr(state, "_SWEPT", False)
    with state.checkpoint_scratch() as scratch:
        assert scratch.is_dir() and scratch.parent == tmp_path
    assert not orphan.exists() and alive.exists() and not scratch.exists()
