"""The bad-input corpus: every malformed study in tests/bad_studies is refused before anything runs.

Each file starts with `# wrong: <what is wrong>` and `# expect: <fragment of the message>`.
`dmltune validate` must exit with code 2 and print exactly one line that contains the fragment
(and names the arm when the mistake is inside an arm).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from dmltune.cli import main
from dmltune.registry import ConfigError
from dmltune.study import load_study

CORPUS = sorted((Path(__file__).parent / "bad_studies").glob("*.yaml"))


def expectation(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            return line[len("# expect: "):]
    raise AssertionError(f"{path.name} has no '# expect:' line")


def test_corpus_is_large_and_documented():
    assert len(CORPUS) >= 30
    for path in CORPUS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# wrong: "), path.name
        expectation(path)


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_validate_refuses_with_one_line(path, capsys):
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = captured.err.strip()
    assert "\n" not in message and message.startswith("dmltune: error: ")
    assert expectation(path) in message, message
    if "    - name: a" in path.read_text() or "\n  - name: a" in path.read_text():
        inside_arm = any(word in expectation(path) for word in ("miner", "loss", "gamma", "lam", "grid", "domain",
                                                                 "mode", "ASHA", "max_t", "clamp", "beta"))
        inside_arm = inside_arm and "(shared by all arms)" not in expectation(path)  # a shared section's mistake
        if inside_arm:
            assert "arm 'a'" in message, message


def test_validate_as_a_real_process_exits_2():
    path = next(p for p in CORPUS if p.stem == "unknown_miner")
    proc = subprocess.run([sys.executable, "-m", "dmltune", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_a_study_file_cannot_execute_code(tmp_path):
    marker = Path("/tmp/dmltune_pwned")
    marker.unlink(missing_ok=True)
    path = next(p for p in CORPUS if p.stem == "python_object_tag")
    with pytest.raises(ConfigError):
        load_study(path)
    # strings that look like code stay strings: they are never evaluated
    study = tmp_path / "s.yaml"
    study.write_text(path.read_text().split("x: !!python", 1)[0].replace("name: bad", "name: ok")
                     + "arms:\n  - name: a\n    loss: {name: ms}\n")
    load_study(study, overrides=["description=__import__('os').system('touch /tmp/dmltune_pwned')"])
    assert not marker.exists()


def test_source_uses_only_safe_loaders():
    import re

    package = Path(__file__).resolve().parents[1] / "dmltune"
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), f"{path}: eval/exec"
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, f"{path}: use yaml.safe_load"
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_a_binary_study_file_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert main(["run", str(path)]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "not a text file" in message and str(path) in message
