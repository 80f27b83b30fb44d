"""Hostile and malformed study input: refused with exit code 2 and one line naming the file or key,
before any trial starts, never with a traceback, a hang or a blown-up memory (dmltune.config_files).

Cases that are not small text files (binary, huge, deeply nested, alias bombs) are written here;
the rest of the bad-input corpus lives in tests/bad_studies (test_bad_studies.py).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from dmltune.cli import main
from dmltune.config_files import MAX_BYTES, MAX_DEPTH, apply_overrides, load_yaml_text, read_yaml
from dmltune.registry import ConfigError
from dmltune.study import load_study

ROOT = Path(__file__).resolve().parents[1]

STUDY = """\
name: hostile
seeds: [0]
resources: {cpu: 1}
dataset: {name: digits, val_fraction: 0.4}
model: {backbone: small_cnn, dim: 8}
train: {epochs: 1, batch_size: 24, k: 8}
eval: {metric: map@r}
arms:
  - name: a
    miner: {name: asms}
    loss: {name: soft_contrastive}
"""


def refused(capsys, argv) -> str:
    """``dmltune argv`` exits 2 with exactly one stderr line ``dmltune: error: ...``; that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("dmltune: error: "), captured.err
    return captured.err.strip()


@pytest.fixture
def study_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # storage: results lands here

    def write(text: str = STUDY, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


# --- files that are not short YAML texts -------------------------------------------------------

@pytest.mark.parametrize("content, fragment", [
    (b"name: a\x00\x01\x02\nseeds: [0]\n", "not a text file (byte 7 is NUL)"),
    (b"name: caf\xe9\nseeds: [0]\n", "not a text file (byte 9 is not UTF-8)"),
    (b"\xff\xfe" + "name: a\n".encode("utf-16-le"), "not a text file"),
    (bytes(range(256)) * 64, "not a text file"),
])
def test_binary_files_are_refused(tmp_path, capsys, content, fragment):
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    for command in ("validate", "run"):
        message = refused(capsys, [command, str(path)])
        assert fragment in message and str(path) in message


def test_a_file_over_one_mebibyte_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text(STUDY + "# padding\n" * (MAX_BYTES // 10 + 1))
    assert path.stat().st_size > MAX_BYTES
    message = refused(capsys, ["validate", str(path)])
    assert str(path) in message and "larger than 1 MiB" in message


def test_a_folder_or_a_missing_file_is_named(tmp_path, capsys):
    assert "is a folder" in refused(capsys, ["validate", str(tmp_path)])
    assert "no such file" in refused(capsys, ["validate", str(tmp_path / "nope.yaml")])
    assert "cannot be read" in refused(capsys, ["validate", str(tmp_path / ("x" * 5000))])  # name too long


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}"), ("- ", "")])
def test_deep_nesting_is_refused_without_recursion_error(study_file, capsys, opening, closing):
    if opening == "- ":  # block sequences: each level one more indentation step
        nested = "description:\n" + "".join("  " * i + "-\n" for i in range(1, 200)) + "  " * 200 + "- x\n"
    else:
        nested = "description: " + opening * 10_000 + "x" + closing * 10_000 + "\n"
    path = study_file(nested + STUDY.split("\n", 1)[1].replace("seeds", "name: deep\nseeds", 1))
    message = refused(capsys, ["validate", str(path)])
    assert str(path) in message and f"nested more than {MAX_DEPTH} levels deep" in message


BOMB = "".join(
    [f"a0: &a0 [{', '.join(['lol'] * 10)}]\n"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)]
    + ["m0: &m0 {k0: 0, k1: 1, k2: 2}\n", "m1: &m1 {<<: [*m0, *m0, *m0]}\n"]  # merge keys still work
)

BOMB_RUNNER = textwrap.dedent("""\
    import resource, sys
    import dmltune.cli, dmltune.study
    try:
        import dmltune.study.runner  # imported by validate; counted in the baseline
    except Exception:
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = dmltune.cli.main(["validate", sys.argv[1]])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(code, grown // 1024)
""")


def test_an_alias_bomb_fails_fast_in_little_memory(study_file):
    path = study_file(STUDY + BOMB)
    proc = subprocess.run([sys.executable, "-c", BOMB_RUNNER, str(path)], capture_output=True, text=True,
                          timeout=20, cwd=path.parent)
    code, grown_mib = proc.stdout.split()
    assert code == "2", proc.stderr
    assert int(grown_mib) < 200  # the 10**9 values are never built
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("dmltune: error: ")
    assert str(path) in proc.stderr and "aliases expand to more than 1,000,000 values" in proc.stderr


def test_modest_aliases_and_merge_keys_still_work(study_file):
    text = STUDY.replace("train: {epochs: 1, batch_size: 24, k: 8}", "train: &t {epochs: 1, batch_size: 24, k: 8}")
    text += "  - name: b\n    loss: {name: ms}\n    train: {<<: *t, lr: 2e-4}\n"
    study = load_study(study_file(text))
    assert study.arms[1].resolved["train"]["lr"] == pytest.approx(2e-4)
    assert study.arms[1].resolved["train"]["batch_size"] == 24


def test_recursive_alias_is_refused(capsys, study_file):
    message = refused(capsys, ["validate", str(study_file(STUDY + "description: &x [a, *x]\n"))])
    assert "refers to the value that contains it" in message


# --- keys: duplicates and keys that are not names -------------------------------------------------

def test_duplicate_keys_name_the_key_and_lines(study_file, capsys):
    path = study_file(STUDY.replace("eval: {metric: map@r}", "eval: {metric: map@r}\nseeds: [1, 2]"))
    message = refused(capsys, ["validate", str(path)])
    assert "the key 'seeds' appears twice in one mapping (lines 2 and 8)" in message and str(path) in message
    path = study_file(STUDY.replace("k: 8}", "k: 8, epochs: 3}"))
    assert "the key 'epochs' appears twice" in refused(capsys, ["validate", str(path)])


@pytest.mark.parametrize("line, fragment", [
    ("1: x", "the key '1' reads as a number"),
    ("null: x", "the key 'null' reads as empty (null)"),
    ("~: x", "the key '~' reads as empty (null)"),
    ("yes: x", "the key 'yes' reads as true/false"),
    ("2024-01-01: x", "reads as a date"),
    ("? [a, b]\n: x", "a key is a list or mapping"),
])
def test_keys_that_are_not_names(study_file, capsys, line, fragment):
    message = refused(capsys, ["validate", str(study_file(line + "\n" + STUDY))])
    assert fragment in message and "(line 1)" in message
    nested = STUDY.replace("miner: {name: asms}", "miner: {name: asms, " + line.split(":")[0] + ": 1}")
    if "\n" not in line:
        assert fragment in refused(capsys, ["validate", str(study_file(nested))])


def test_quoted_keys_are_names(study_file, capsys):
    path = study_file(STUDY.replace("miner: {name: asms}", "miner: {name: asms, '1': 2}"))
    assert "has no parameter '1'" in refused(capsys, ["validate", str(path)])


# --- sections of the wrong shape, in the file and through --set -----------------------------------

@pytest.mark.parametrize("override, fragment", [
    ("train=5", "study: 'train' must be a mapping like {epochs: 10, lr: 1.0e-5}, got 5"),
    ("model=small_cnn", "study: 'model' must be a mapping like {backbone: small_cnn}, got 'small_cnn'"),
    ("dataset=[digits]", "study: 'dataset' must be a mapping like"),
    ("eval=map@r", "study: 'eval' must be a mapping like {metric: map@r}"),
    ("arms=3", "study: 'arms' must be a list of arms like [{name: a,"),
    ("arms=[3]", "study: arm #1 must be a mapping like {name: a,"),
    ("arms=[{name: a, miner: asms, loss: {name: ms}}]", "arm 'a': 'miner' must be a mapping like {name: asms}"),
    ("arms=[{name: a, loss: ms}]", "arm 'a': 'loss' must be a mapping like {name: ms}"),
    ("arms=[{name: a, loss: {name: ms}, train: [1]}]", "arm 'a': 'train' must be a mapping like"),
    ("resources=4", "study: 'resources' must be a mapping like {cpu: 1, gpu: 0.5}"),
    ("seeds=3", "study: 'seeds' must be a list of integers like [0, 1, 2]"),
    ("miner=asms", "unknown key(s) ['miner']"),
    ("train={1: 2}", "the key '1' reads as a number"),
    ("train.lr=", "train: 'lr' may not be empty"),
    ("train.epochs.x=1", "'epochs' is a value, not a section"),
    ("train..lr=1", "write it as key.path=value"),
    ("description=\"a\\0b\"", "a value contains a NUL character"),
])
def test_set_overrides_of_the_wrong_shape(study_file, capsys, override, fragment):
    for command in ("validate", "run"):
        message = refused(capsys, [command, str(study_file()), "--set", override])
        assert fragment in message, message


def test_train_command_refuses_sections_of_the_wrong_shape(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("dataset: {name: digits}\nmodel: {backbone: small_cnn, dim: 8}\nminer: asms\n"
                      "loss: {name: ms}\ntrain: {epochs: 1, batch_size: 24, k: 8}\n")
    assert "'miner' must be a mapping like {name: asms}" in refused(capsys, ["train", str(config)])
    config.write_text("dataset: {name: digits}\nloss: {name: ms}\nseed: 18446744073709551616\n")
    assert "'seed' = 18446744073709551616 does not fit" in refused(capsys, ["train", str(config)])


# --- numbers: 1e-3, seeds ------------------------------------------------------------------------

def test_exponent_floats_are_numbers_in_files_and_overrides(study_file):
    assert load_yaml_text("[1e-3, 5E4, -2e+2, .5e1, 1.5e3, 1.0e-3, 1e3x, 12, 0.5]", "x") == \
        [0.001, 50000.0, -200.0, 5.0, 1500.0, 0.001, "1e3x", 12, 0.5]
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # the global SafeLoader is left as it was
    study = load_study(study_file(STUDY.replace("k: 8}", "k: 8, lr: 1e-3}")))
    assert study.arms[0].resolved["train"]["lr"] == 0.001
    assert apply_overrides({}, ["train.lr=1e-3"]) == {"train": {"lr": 0.001}}
    study = load_study(study_file(), overrides=["train.lr=2e-4"])
    assert study.arms[0].resolved["train"]["lr"] == pytest.approx(2e-4)


def test_seeds_must_fit_in_64_bits(study_file, capsys):
    ok = load_study(study_file(STUDY.replace("seeds: [0]", f"seeds: [0, {2**63 - 1}]")), check_data=False)
    assert ok.seeds == [0, 2**63 - 1]
    for seed in (2**63, 2**64, 10**100):
        message = refused(capsys, ["validate", str(study_file()), "--set", f"seeds=[0, {seed}]"])
        assert "does not fit" in message and "2**63" in message


# --- values accepted before and failing later ---------------------------------------------------

def test_storage_must_be_a_folder_that_can_exist(study_file, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    for storage, fragment in ((str(blocker), "is a file, not a folder"),
                              (str(blocker / "below"), "is a file, not a folder"),
                              ("/sys/results", "is under /sys, a system folder"),
                              ("/proc", "is under /proc"),
                              ("''", "'storage' is empty"),
                              ("null", "'storage' must be a folder path"),
                              ("[a, b]", "'storage' must be a folder path")):
        message = refused(capsys, ["validate", str(study_file()), "--set", f"storage={storage}"])
        assert fragment in message, message
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "hostile").write_text("a file where the study folder goes")
    assert "is a file, not a folder" in refused(capsys, ["validate", str(study_file())])


def test_weights_files_must_be_torch_checkpoints(study_file, tmp_path, capsys):
    empty, text, legacy, good = (tmp_path / f"{n}.pth" for n in ("empty", "text", "legacy", "good"))
    empty.write_bytes(b"")
    text.write_text("not a checkpoint")
    torch.save({"w": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    torch.save({"w": torch.zeros(1)}, good)
    message = refused(capsys, ["validate", str(study_file()), "--set", f"model.weights={empty}"])
    assert str(empty) in message and "is empty (0 bytes" in message
    message = refused(capsys, ["validate", str(study_file()), "--set", f"model.weights={text}"])
    assert str(text) in message and "is not a PyTorch checkpoint" in message
    from dmltune.models.weights import check_checkpoint_file

    assert check_checkpoint_file(legacy, "small_cnn") == legacy and check_checkpoint_file(good, "small_cnn") == good


@pytest.mark.parametrize("override, fragment", [
    ("eval.metric=recall@3", "recall@3 is never computed: 3 is not in eval.ks"),
    ("eval.metric=val/map@r", "is not a metric the evaluation computes"),
    ("eval={metric: nmi, nmi: false}", "eval.nmi is false"),
    ("eval.ks=[1, 0]", "eval.ks must be positive integers"),
    ("eval.ks=[1, true]", "eval.ks must be positive integers"),
    ("eval.every=0", "eval.every is 0"),
    ("name=" + "n" * 101, "'name' is 101 characters long"),
    ("train.lr=fast", "study (shared by all arms): train: 'lr' must be a number"),
    ("train.workers=" + "9" * 400, "'workers' = 9999999999...(400 digits) is outside its valid range"),
    ("train.workers=" + "9" * 5000, "a value cannot be read (an integer of over 4300 digits)"),
    ("dataset.root=2024-13-45", "a value cannot be read (month must be in 1..12)"),
])
def test_values_that_would_fail_later_are_refused(study_file, capsys, override, fragment):
    message = refused(capsys, ["validate", str(study_file()), "--set", override])
    assert fragment in message, message


def test_valid_metrics_are_accepted(study_file):
    for override in ("eval.metric=recall@8", "eval.metric=r_precision", "eval.metric=nmi",
                     "eval={metric: recall@16, ks: [1, 16]}"):
        load_study(study_file(), overrides=[override], check_data=False)


# --- shared sections are named as such -----------------------------------------------------------

def test_a_mistake_in_a_shared_section_names_the_section_not_the_first_arm(study_file, capsys):
    two_arms = STUDY + "  - name: b\n    loss: {name: ms}\n"
    message = refused(capsys, ["validate", str(study_file(two_arms.replace("k: 8}", "k: 8, lr: fast}")))])
    assert message.startswith("dmltune: error: study (shared by all arms): train: 'lr'") and "arm 'a'" not in message
    # the arm that overrides the shared value with its own bad one is named
    arm_b = two_arms + "    train: {lr: slow}\n"
    assert "arm 'b': train: 'lr' must be a number, got 'slow'" in refused(capsys, ["validate", str(study_file(arm_b))])
    # an arm's own mistake stays the arm's
    arm_a = STUDY.replace("miner: {name: asms}", "miner: {name: asms, gamma_pos: 7}")
    assert "arm 'a': miner 'asms'" in refused(capsys, ["validate", str(study_file(arm_a))])


def test_error_messages_are_always_one_line():
    assert "\n" not in str(ConfigError("first\nsecond\r\nthird"))
    assert str(ConfigError("first\nsecond")) == "first; second"


def test_shipped_studies_still_load():
    for path in sorted((ROOT / "studies").glob("*.yaml")):
        read_yaml(path)


def test_a_shared_dataset_mistake_names_the_shared_section_not_the_first_arm(capsys, study_file, tmp_path):
    missing = tmp_path / "no_such_cub"
    message = refused(capsys, ["validate", str(study_file()), "--set", "dataset.name=cub200",
                               "--set", f"dataset.root={missing}"])
    assert message.startswith("dmltune: error: study (shared by all arms): dataset") and "arm 'a'" not in message
