"""Command line: ``python -m dmltune <command>``.

Commands so far: ``train`` (one configuration, standalone), ``list`` (every registered component
with its parameters, defaults and ranges) and ``demo`` (a short CPU comparison of fixed and
adaptive thresholds on scikit-learn's digits).
Configuration mistakes end with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from .interruption import StudyFailed, StudyInterrupted
from .registry import ConfigError, Registry


def _registries() -> list[Registry]:
    from .data import DATASETS
    from .generation import GENERATORS
    from .models import BACKBONES
    from .pairs import LOSSES, MINERS

    return [MINERS, LOSSES, GENERATORS, BACKBONES, DATASETS]


def _sections() -> list[tuple]:
    """Configuration sections ``dmltune list`` shows: (names of the group, title, declaration)."""
    from .config import EVAL, META, TRAIN
    from .data.transforms import TRANSFORM
    from .models.embedding import MODEL
    from .study.schema import ASHA, SEARCH, STUDY

    return [
        (("model",), "model (the embedding model)", MODEL),
        (("transform", "dataset.transform"), "dataset.transform (image size and augmentation)", TRANSFORM),
        (("train",), "train (optimisation, batches, checkpoints, device)", TRAIN),
        (("eval",), "eval (evaluation cadence and metrics)", EVAL),
        (("meta", "lam", "loss.lam.meta"), "loss.lam.meta (meta-learned threshold λ)", META),
        (("study",), "study (top-level keys of a study file)", STUDY),
        (("search", "arms.search"), "arms[].search (how an arm's search domains are explored)", SEARCH),
        (("asha", "search.scheduler.asha"), "arms[].search.scheduler.asha (early stopping)", ASHA),
    ]


# widest a column of `dmltune list` grows before its text wraps (name and type never wrap)
_DEFAULT_WIDTH, _RANGE_WIDTH, _MIN_HELP_WIDTH = 20, 24, 36


def _list_width() -> int:
    import shutil

    return max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))  # 120 when piped


def _wrap(text: str, width: int, break_long_words: bool = True) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=break_long_words) or [""]


def format_params(title: str, components: list[tuple[str | None, str, tuple]], width: int | None = None) -> str:
    """A listing: ``title:``, then per component its name and summary (when named) and one row per
    parameter: name, type, default, valid range, help. Column widths come from the content (default
    and range capped, wrapping inside their column), so every row lines up; help wraps at ``width``."""
    width = width or _list_width()
    params = [p for _, _, ps in components for p in ps]
    indent = 4 if any(name for name, _, _ in components) else 2
    name_w = max([len(n) + 2 for n, _, _ in components if n] + [len(p.name) + indent for p in params] + [0])
    kind_w = max([len(p.kind.__name__) for p in params] + [0])
    default_w = min(max([len(f"default {p.default!r}") for p in params] + [0]), _DEFAULT_WIDTH)
    range_w = min(max([len(p.describe_range()) for p in params] + [0]), _RANGE_WIDTH)
    help_col = name_w + 2 + kind_w + 2 + default_w + 2 + range_w + 2
    help_w = max(width - help_col, _MIN_HELP_WIDTH)
    lines = [f"{title}:"]
    for name, summary, ps in components:
        if name:
            text = _wrap(summary, max(width - name_w - 2, _MIN_HELP_WIDTH))
            lines.append(f"  {name:<{name_w - 2}}  {text[0]}".rstrip())
            lines += [" " * (name_w + 2) + t for t in text[1:]]
        for p in ps:
            default, help = _wrap(f"default {p.default!r}", default_w, break_long_words=False), p.help
            if any(len(piece) > default_w for piece in default):  # one long word (a path): it opens the help
                default, help = ["default →"], f"= {p.default!r}; {p.help}"
            cells = [[" " * indent + p.name], [p.kind.__name__], default, _wrap(p.describe_range(), range_w),
                     _wrap(help, help_w)]
            widths = (name_w, kind_w, default_w, range_w, help_w)
            for row in range(max(len(c) for c in cells)):
                parts = [(c[row] if row < len(c) else "").ljust(w) for c, w in zip(cells, widths)]
                lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_registry(registry: Registry, width: int | None = None) -> str:
    """Human-readable listing of one registry: name, summary and each parameter."""
    return format_params(registry.plural, [(name, registry[name].help, registry[name].params) for name in registry],
                         width)


def _list_groups() -> list[tuple]:
    """(names that select the group, its listing) of every group ``dmltune list`` knows."""
    groups = [((r.plural, r.kind), r) for r in _registries()]
    groups += [(names, (title, component)) for names, title, component in _sections()]
    return groups


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import _did_you_mean

    groups = _list_groups()
    chosen = [(names, what) for names, what in groups if not args.kind or args.kind in names]
    if not chosen:
        hint = _did_you_mean(args.kind, [name for names, _ in groups for name in names])
        raise ConfigError(f"unknown list group {args.kind!r}{hint}; "
                          f"valid groups: {', '.join(names[0] for names, _ in groups)}")
    text = "\n\n".join(format_registry(what) if isinstance(what, Registry)
                       else format_params(what[0], [(None, "", what[1].params)]) for _, what in chosen)
    try:
        print(text + "\n", flush=True)
    except BrokenPipeError:  # `dmltune list | head`: the reader has gone, which is fine
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .config_files import apply_overrides, read_yaml
    from .pairs.coupling import decoupled_notes
    from .training import train

    config = apply_overrides(read_yaml(args.config), args.set)
    resolve_config(config, where=str(args.config))  # every mistake reported before anything is built
    for note in decoupled_notes(config, str(args.config)):
        print(note, file=sys.stderr)
    last = train(config, checkpoint_root=args.checkpoint_dir)
    return 0 if last.get("status") == "ok" else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from .study import load_study
    from .study.runner import plan_lines

    from .study.runner import check_resources, cluster_resources, local_resources

    study = load_study(args.study, args.set, scan_data=not args.no_data_scan)
    if args.address:
        check_resources(study, cluster_resources(args.address), f"the Ray cluster at {args.address}")
    else:
        check_resources(study, local_resources(), "this machine")
    print(f"{args.study}: valid")
    print("\n".join(plan_lines(study) + study.notes))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .study import load_study
    from .study.runner import plan_lines, run_study

    from .study.lifecycle import check_recorded_plan

    study = load_study(args.study, args.set, scan_data=not args.no_data_scan)
    print("\n".join(plan_lines(study) + study.notes), flush=True)
    if args.dry_run:
        return 0
    aside = check_recorded_plan(study, fresh=args.fresh)
    if aside is not None:
        print(f"--fresh: the earlier study folder was moved to {aside}", flush=True)
    outcome = run_study(study, address=args.address)
    print(f"\nresults: {outcome.directory / 'trials.parquet'} (and trials.csv)\n")
    _summarise(study, outcome.directory)
    return _exit_code(outcome)


def _exit_code(outcome) -> int:
    """0 when every trial finished ok or diverged (a result); 1 when some errored, listed here."""
    if not outcome.errored:
        return 0
    print(f"\n{len(outcome.errored)} trial(s) ended in error (the `error` column of trials.csv):", file=sys.stderr)
    for line in outcome.errored[:10]:
        print(f"  {line}", file=sys.stderr)
    if len(outcome.errored) > 10:
        print(f"  and {len(outcome.errored) - 10} more", file=sys.stderr)
    print(f"after fixing the cause, `dmltune resume {outcome.directory} --retry-errored` runs them again",
          file=sys.stderr)
    return 1


def _summarise(study, folder) -> None:
    """Write the study's report (analysis, tables, figures) and print its summary."""
    from .analysis.report import console_summary, write_report

    path, analysis = write_report(folder)
    print(console_summary(analysis))
    print(f"\nreport: {path}")


def cmd_resume(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .study import load_study
    from .study.runner import STUDY_RECORD, plan_lines, run_study

    record = Path(args.study_dir) / STUDY_RECORD
    if not record.is_file():
        raise ConfigError(f"{record} not found; resume takes the folder a study wrote (storage/name)")
    study = load_study(record, scan_data=not args.no_data_scan)
    if study.directory != Path(args.study_dir).resolve():
        study.directory = Path(args.study_dir).resolve()
    print("\n".join(plan_lines(study)), flush=True)
    outcome = run_study(study, address=args.address, retry_errored=args.retry_errored)
    _summarise(study, outcome.directory)
    return _exit_code(outcome)


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import console_summary, write_report

    overrides = {"reference": args.reference, "delta": args.delta, "bootstrap": args.bootstrap,
                 "confidence": args.confidence}
    path, analysis = write_report(args.study_dir, overrides, metric=args.metric, figures=not args.no_figures)
    print(console_summary(analysis))
    print(f"\nreport: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import check_count, run_demo

    # checked here, not by argparse, so a bad value ends in one line (argparse adds its usage text)
    run_demo(epochs=check_count(args.epochs, "--epochs"), seeds=check_count(args.seeds, "--seeds"))
    return 0


def _add_data_scan_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-data-scan", action="store_true",
                        help="skip the header scan of every image of folder datasets (corrupt, empty or oversized "
                             "files are then found only when a trial reads them)")


def _file_command(sub, name: str, func, help: str, file: str, file_help: str) -> argparse.ArgumentParser:
    """A subcommand reading one YAML file, with ``--set`` overrides."""
    p = sub.add_parser(name, help=help)
    p.add_argument(file, help=file_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a setting (repeatable; the value is YAML)")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmltune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list components (miners, losses, ...) and configuration sections (train, eval, "
                       "...) with each parameter's type, default, range and meaning")
    p.add_argument("kind", nargs="?", metavar="GROUP",
                   help="only this group: miners, losses, generations, backbones, datasets (components); model, "
                        "transform, train, eval, meta (loss.lam.meta), study, search, asha (settings); default: all")
    p.set_defaults(func=cmd_list)

    p = _file_command(sub, "run", cmd_run, "validate a study file, then run every arm with Ray Tune",
                      "study", "study YAML file")
    p.add_argument("--address", help="Ray cluster to join (auto or HOST:PORT); default: start Ray in-process")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
    _add_data_scan_flag(p)
    p.add_argument("--fresh", action="store_true", help="the study folder holds a different study: move it aside "
                   "(to NAME.old-TIME; nothing is deleted) and start anew")

    p = sub.add_parser("resume", help="finish an interrupted study without re-running completed trials")
    p.add_argument("study_dir", help="the study's folder (storage/name)")
    p.add_argument("--address", help="Ray cluster to join; default: start Ray in-process")
    _add_data_scan_flag(p)
    p.add_argument("--retry-errored", action="store_true",
                   help="also run the trials that ended in error again, from scratch (after fixing the cause)")
    p.set_defaults(func=cmd_resume)

    p = _file_command(sub, "validate", cmd_validate, "check a study file and print its plan; nothing runs",
                      "study", "study YAML file")
    _add_data_scan_flag(p)
    p.add_argument("--address", help="check the resources against this Ray cluster (default: this machine)")

    p = sub.add_parser("report", help="analyse a study folder: write report.md, figures/ and tables/ into it")
    p.add_argument("study_dir", help="the study's folder (storage/name)")
    p.add_argument("--metric", help="selection metric, e.g. map@r or recall@1 (default: the study's eval.metric)")
    p.add_argument("--reference", help="arm to compare with (default: the study's analysis.reference, "
                   "else the last single-configuration arm)")
    p.add_argument("--delta", type=float, help="an arm matches when a configuration's true mean is ≥ reference − delta "
                   "(default: the study's analysis.delta, else 0.01)")
    p.add_argument("--confidence", type=float, help="level of every verdict and interval (default 0.95)")
    p.add_argument("--bootstrap", type=int, help="bootstrap replicates over seeds (default 1000)")
    p.add_argument("--no-figures", action="store_true", help="write report.md and tables/ without drawing figures")
    p.set_defaults(func=cmd_report)

    p = _file_command(sub, "train", cmd_train, "train one configuration standalone, one line per epoch",
                      "config", "YAML file with the sections dataset, model, miner, loss, train, eval, seed")
    p.add_argument("--checkpoint-dir", help="keep checkpoints here; rerunning the same command resumes (with more "
                   "train.epochs too; a checkpoint of a different configuration is refused)")

    p = sub.add_parser("demo", help="short CPU demo: fixed vs adaptive thresholds on digits")
    p.add_argument("--epochs", default=8, metavar="N", help="training epochs of every arm, ≥ 1 (default 8)")
    p.add_argument("--seeds", default=2, metavar="N",
                   help="seeds 0 .. N−1 per arm, ≥ 1; the spread (± sd) needs 2 or more (default 2)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"dmltune: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, StudyInterrupted) as err:
        print(f"dmltune: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except StudyFailed as err:
        print(f"dmltune: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
