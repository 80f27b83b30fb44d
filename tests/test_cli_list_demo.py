"""`dmltune list`: every group (components and configuration sections) with aligned columns, and a
one-line error for an unknown group; `dmltune demo`: bad options end in one line with exit code 2."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dmltune.cli import _list_groups, build_parser, format_params, main
from dmltune.config import EVAL_PARAMS, TRAIN_PARAMS
from dmltune.meta_lambda import META_PARAMS
from dmltune.models.model_section import MODEL_PARAMS
from dmltune.study.schema import STUDY

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^ +(\S+) +(int|float|bool|str|list|dict|object)  +default ")


def _list(capsys, *args) -> list[str]:
    assert main(["list", *args]) == 0
    return capsys.readouterr().out.rstrip("\n").splitlines()


def _fields(line: str) -> list[int]:
    """Where each field of a line starts: fields are separated by two spaces or more."""
    return [m.start() for m in re.finditer(r"\S+(?: \S+)*", line)]


def _columns_line_up(lines: list[str]) -> None:
    """Every parameter row has its name, type, default, range and help at the same five columns;
    a wrapped line (default, range or help too long for its column) is blank up to one of the
    columns it continues; a component's summary starts at the type column."""
    rows = [line for line in lines[1:] if ROW.match(line)]
    assert rows
    columns = _fields(rows[0])
    assert len(columns) == 5, rows[0]
    for line in lines[1:]:
        starts = _fields(line)
        if ROW.match(line):
            assert starts == columns, (line, columns)
        elif line.startswith("  ") and not line.startswith(" " * (columns[0] + 1)) and columns[0] > 2:
            assert starts[0] == 2 and (len(starts) == 1 or starts[1] == columns[1]), line  # component
        else:
            assert set(starts) <= set(columns[1:]), (line, columns)


@pytest.mark.parametrize("group, params", [
    ("train", TRAIN_PARAMS), ("eval", EVAL_PARAMS), ("model", MODEL_PARAMS), ("meta", META_PARAMS),
    ("study", STUDY.params),
])
def test_list_sections_show_every_key(capsys, group, params):
    lines = _list(capsys, group)
    rows = [ROW.match(line) for line in lines if ROW.match(line)]
    assert [(m.group(1), m.group(2)) for m in rows] == [(p.name, p.kind.__name__) for p in params]
    assert lines[0].startswith(group if group != "meta" else "loss.lam.meta")
    _columns_line_up(lines)


def test_list_meta_is_titled_with_its_place_in_the_config(capsys):
    assert _list(capsys, "meta")[0].startswith("loss.lam.meta")
    assert _list(capsys, "loss.lam.meta")[0].startswith("loss.lam.meta")


@pytest.mark.parametrize("group", ["miners", "loss", "backbones", "datasets", "generations", "transform", "asha"])
def test_list_component_groups_line_up(capsys, group):
    lines = _list(capsys, group)
    assert lines[0].endswith(":")
    _columns_line_up(lines)


def test_every_group_lines_up_at_any_width():
    for _, what in _list_groups():
        for width in (60, 80, 120, 200):
            if isinstance(what, tuple):
                text = format_params(what[0], [(None, "", what[1].params)], width=width)
            else:
                text = format_params(what.plural, [(n, what[n].help, what[n].params) for n in what], width=width)
            _columns_line_up(text.splitlines())


def test_list_everything(capsys):
    text = "\n".join(_list(capsys))
    for title in ("miners:", "losses:", "datasets:", "train (", "eval (", "model (", "loss.lam.meta (", "study ("):
        assert title in text


def test_list_unknown_group_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "dmltune", "list", "foo"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("dmltune: error: ") and proc.stderr.strip().count("\n") == 0
    for group in ("miners", "losses", "train", "eval", "model", "meta", "study"):
        assert group in proc.stderr


def test_list_suggests_a_close_group(capsys):
    assert main(["list", "trian"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'train'" in err and err.strip().count("\n") == 0


def test_demo_seeds_0_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "dmltune", "demo", "--seeds", "0"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "dmltune: error: demo --seeds must be a whole number ≥ 1, got 0"


@pytest.mark.parametrize("args, option", [(["--epochs", "-1"], "--epochs"), (["--epochs", "0"], "--epochs"),
                                          (["--epochs", "two"], "--epochs"), (["--seeds", "1.5"], "--seeds"),
                                          (["--seeds", "-3"], "--seeds")])
def test_demo_bad_options_exit_2_with_one_line(capsys, args, option):
    assert main(["demo", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"dmltune: error: demo {option} ") and captured.err.strip().count("\n") == 0


def test_demo_and_list_options_have_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("demo", "list"):
        for action in sub.choices[command]._actions:
            assert action.help, f"{command} {action.dest} has no help"
