"""Command line: ``python -m dmltune <command>``.

Commands so far: ``train`` (one configuration, standalone), ``list`` (every registered component
with its parameters, defaults and ranges) and ``demo`` (a short CPU comparison of fixed and
adaptive thresholds on scikit-learn's digits).
Configuration mistakes end with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from .interruption import StudyInterrupted
from .registry import ConfigError, Registry


def _registries() -> list[Registry]:
    from .data import DATASETS
    from .generation import GENERATORS
    from .models import BACKBONES
    from .pairs import LOSSES, MINERS

    return [MINERS, LOSSES, GENERATORS, BACKBONES, DATASETS]


def format_registry(registry: Registry) -> str:
    """Human-readable listing of one registry: name, summary and each parameter."""
    lines = [f"{registry.plural}:"]
    for name in registry:
        component = registry[name]
        lines.append(f"  {name:<18} {component.help}")
        for p in component.params:
            lines.append(
                f"      {p.name:<16} {p.kind.__name__:<6} default {p.default!r:<12} {p.describe_range():<22} {p.help}"
            )
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    for registry in _registries():
        if args.kind and args.kind not in (registry.kind, registry.plural):
            continue
        print(format_registry(registry))
        print()
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

    study = load_study(args.study, args.set)
    print(f"{args.study}: valid")
    print("\n".join(plan_lines(study) + study.notes))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .study import load_study
    from .study.runner import plan_lines, run_study

    study = load_study(args.study, args.set)
    print("\n".join(plan_lines(study) + study.notes), flush=True)
    if args.dry_run:
        return 0
    folder = run_study(study, address=args.address)
    print(f"\nresults: {folder / 'trials.parquet'} (and trials.csv)\n")
    _summarise(study, folder)
    return 0


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
    study = load_study(record)
    if study.directory != Path(args.study_dir).resolve():
        study.directory = Path(args.study_dir).resolve()
    print("\n".join(plan_lines(study)), flush=True)
    folder = run_study(study, address=args.address)
    _summarise(study, folder)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import console_summary, write_report

    overrides = {"reference": args.reference, "delta": args.delta, "bootstrap": args.bootstrap,
                 "confidence": args.confidence}
    path, analysis = write_report(args.study_dir, overrides, metric=args.metric, figures=not args.no_figures)
    print(console_summary(analysis))
    print(f"\nreport: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(epochs=args.epochs, seeds=args.seeds)
    return 0


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

    p = sub.add_parser("list", help="list miners, losses, backbones and datasets with their parameters")
    p.add_argument("kind", nargs="?", help="only this kind (miners, losses, backbones, datasets)")
    p.set_defaults(func=cmd_list)

    p = _file_command(sub, "run", cmd_run, "validate a study file, then run every arm with Ray Tune",
                      "study", "study YAML file")
    p.add_argument("--address", help="Ray cluster to join (auto or HOST:PORT); default: start Ray in-process")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan only")

    p = sub.add_parser("resume", help="finish an interrupted study without re-running completed trials")
    p.add_argument("study_dir", help="the study's folder (storage/name)")
    p.add_argument("--address", help="Ray cluster to join; default: start Ray in-process")
    p.set_defaults(func=cmd_resume)

    _file_command(sub, "validate", cmd_validate, "check a study file and print its plan; nothing runs",
                  "study", "study YAML file")

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
    p.add_argument("--checkpoint-dir", help="keep checkpoints here; rerunning the same command resumes")

    p = sub.add_parser("demo", help="short CPU demo: fixed vs adaptive thresholds on digits")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
