"""Command line: ``python -m dmltune <command>``.

Commands: ``run``, ``resume``, ``extend``, ``validate`` and ``report`` (studies), ``train`` (one configuration,
standalone), ``list`` (every component and setting with its parameters) and ``demo``. Exit codes:
0 done, 1 some trials errored (or the study could not go on), 2 bad input (one line on stderr, before
anything runs), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from .interruption import StudyFailed, StudyInterrupted, report_interruption
from .listing import _list_groups, format_params, format_registry  # noqa: F401 (also importable from here)
from .registry import ConfigError, Registry


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
    from .demo import check_count
    from .training import train

    config = apply_overrides(read_yaml(args.config), args.set)
    resolve_config(config, where=str(args.config))  # every mistake reported before anything is built
    for note in decoupled_notes(config, str(args.config)):
        print(note, file=sys.stderr)
    threads = None if args.threads is None else check_count(args.threads, "--threads", "train")
    last = train(config, checkpoint_root=args.checkpoint_dir, threads=threads)
    return 0 if last.get("status") == "ok" else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from .study import load_study
    from .study.plan import plan_lines
    from .study.resources import local_resources
    from .study.ray_connection import cluster_resources

    if args.address:  # every problem in one list, the machine's too (the cluster is asked only if the rest allows)
        machine = (lambda: cluster_resources(args.address), f"the Ray cluster at {args.address}")
    else:
        machine = None if args.no_data else (local_resources(), "this machine")
    study = load_study(args.study, args.set, check_data=not args.no_data, scan_data=not args.no_data_scan,
                       machine=machine)
    _print_warnings(study)
    print(f"{args.study}: valid" + (" (its structure; --no-data)" if args.no_data else ""))
    print("\n".join(plan_lines(study) + study.notes))
    if args.no_data:
        print("not checked (--no-data): " + "; ".join(study.unchecked + (
            [] if args.address else ["the resources against this machine (--address checks a cluster's)"])))
    return 0


def _print_warnings(study) -> None:
    """One line per setting that is valid but most likely a mistake (nothing is refused)."""
    for line in study.warnings:
        print(f"dmltune: warning: {line}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .study import load_study
    from .study.plan import plan_lines
    from .study.runner import run_study

    from .study.lifecycle import check_recorded_plan

    import os

    from .study.resources import local_resources

    ray = sys.modules.get("ray")  # Ray will start on this machine: its resources are checked with the rest
    here = not (args.dry_run or args.address or os.environ.get("RAY_ADDRESS") or (ray and ray.is_initialized()))
    study = load_study(args.study, args.set, scan_data=not args.no_data_scan,
                       machine=(local_resources(), "this machine") if here else None)
    _print_warnings(study)
    print("\n".join(plan_lines(study) + study.notes), flush=True)
    if args.dry_run:
        return 0
    aside = check_recorded_plan(study, fresh=args.fresh)
    if aside is not None:
        print(f"--fresh: the earlier study folder was moved to {aside}", flush=True)
    return _finish(study, run_study(study, address=args.address, one_at_a_time=args.one_at_a_time))


def cmd_extend(args: argparse.Namespace) -> int:
    from .study import load_study
    from .study.extension import plan_growth, recorded_study
    from .study.plan import plan_lines
    from .study.runner import run_study

    study = load_study(args.study, args.set, scan_data=not args.no_data_scan)
    growth = plan_growth(recorded_study(study.directory), study)
    print("\n".join(plan_lines(study) + study.notes + growth.lines()), flush=True)
    if args.dry_run:
        return 0
    return _finish(study, run_study(study, address=args.address, extend=True,
                                     one_at_a_time=args.one_at_a_time))


def _finish(study, outcome) -> int:
    """After `run` or `extend`: where the results are, the report and its summary, the exit code."""
    print(f"\nresults: {outcome.directory / 'trials.parquet'} (and trials.csv)\n")
    reported = _summarise(study, outcome.directory)
    return max(_exit_code(outcome), 0 if reported else 1)


def _exit_code(outcome) -> int:
    """0 when every trial finished ok or diverged (a result); 1 when some errored, listed here, or
    when tracking to MLflow failed on the way (the results themselves are complete)."""
    if outcome.tracking_failure:
        print(f"\ndmltune: {outcome.tracking_failure}", file=sys.stderr)
    if not outcome.errored:
        return 1 if outcome.tracking_failure else 0
    print(f"\n{len(outcome.errored)} trial(s) ended in error (the `error` column of trials.csv):", file=sys.stderr)
    for line in outcome.errored[:10]:
        print(f"  {line}", file=sys.stderr)
    if len(outcome.errored) > 10:
        print(f"  and {len(outcome.errored) - 10} more", file=sys.stderr)
    print(f"after fixing the cause, `dmltune resume {outcome.directory} --retry-errored` runs them again",
          file=sys.stderr)
    return 1


def _summarise(study, folder) -> bool:
    """Write the study's report (analysis, tables, figures) and print its summary. False when a full
    or read-only disk stopped it (said in one line: the trials are all kept)."""
    from .analysis.report import console_summary, write_report
    from .study.disk import disk_stop_message

    try:
        path, analysis = write_report(folder)
    except ConfigError as err:  # e.g. every trial failed: no validation value to analyse
        print(f"no report: {err}", file=sys.stderr)
        return True
    except OSError as err:
        message = disk_stop_message(err, f"every trial is kept in {folder / 'trials.parquet'}; free space (or make "
                                          f"it writable), then `dmltune report {folder}`")
        if message is None:
            raise
        print(f"dmltune: error: no report: {message}", file=sys.stderr)
        return False
    print(console_summary(analysis))
    print(f"\nreport: {path} (and {path.with_suffix('.html').name}: one page, figures inline)")
    return True


def cmd_resume(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .study import load_study
    from .study.lifecycle import STUDY_RECORD
    from .study.plan import plan_lines
    from .study.runner import run_study

    record = Path(args.study_dir) / STUDY_RECORD
    if not record.is_file():
        raise ConfigError(f"{record} not found; resume takes the folder a study wrote (storage/name)")
    study = load_study(record, scan_data=not args.no_data_scan)
    if study.directory != Path(args.study_dir).resolve():
        study.directory = Path(args.study_dir).resolve()
    print("\n".join(plan_lines(study)), flush=True)
    outcome = run_study(study, address=args.address, retry_errored=args.retry_errored,
                        one_at_a_time=args.one_at_a_time)
    reported = _summarise(study, outcome.directory)
    return max(_exit_code(outcome), 0 if reported else 1)


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import console_summary, write_report

    overrides = {"reference": args.reference, "delta": args.delta, "bootstrap": args.bootstrap,
                 "confidence": args.confidence}
    path, analysis = write_report(args.study_dir, overrides, metric=args.metric, figures=not args.no_figures)
    print(console_summary(analysis))
    print(f"\nreport: {path} (and {path.with_suffix('.html').name}: one page, figures inline)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import check_count, run_demo

    # checked here, not by argparse, so a bad value ends in one line (argparse adds its usage text)
    run_demo(epochs=check_count(args.epochs, "--epochs"), seeds=check_count(args.seeds, "--seeds"),
             threads=check_count(args.threads, "--threads"))
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


def _add_schedule_flag(p) -> None:
    p.add_argument("--one-at-a-time", action="store_true",
                   help="run the study's Tune experiments one after another, arm by arm (default: every arm's "
                        "trials in one queue, side by side; docs/studies.md, Scheduling)")


def _add_study_commands(sub) -> None:
    """run, resume, validate, report."""
    p = _file_command(sub, "run", cmd_run, "validate a study file, then run every arm with Ray Tune",
                      "study", "study YAML file")
    p.add_argument("--address", help="Ray cluster to join (auto or HOST:PORT); default: start Ray in-process")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
    _add_data_scan_flag(p)
    _add_schedule_flag(p)
    p.add_argument("--fresh", action="store_true", help="the study folder holds a different study: move it aside "
                   "(to NAME.old-TIME; nothing is deleted) and start anew")

    p = _file_command(sub, "extend", cmd_extend, "grow a study (more seeds, grid values or arms): finished trials are "
                      "kept, only the new ones run", "study", "the grown study YAML file (same name and settings)")
    p.add_argument("--address", help="Ray cluster to join (auto or HOST:PORT); default: start Ray in-process")
    p.add_argument("--dry-run", action="store_true", help="check the growth and print the plan only")
    _add_data_scan_flag(p)
    _add_schedule_flag(p)

    p = sub.add_parser("resume", help="finish an interrupted study without re-running completed trials")
    p.add_argument("study_dir", help="the study's folder (storage/name)")
    p.add_argument("--address", help="Ray cluster to join; default: start Ray in-process")
    _add_data_scan_flag(p)
    _add_schedule_flag(p)
    p.add_argument("--retry-errored", action="store_true",
                   help="also run the trials that ended in error again, from scratch (after fixing the cause)")
    p.set_defaults(func=cmd_resume)

    p = _file_command(sub, "validate", cmd_validate, "check a study file and print its plan; nothing runs",
                      "study", "study YAML file")
    _add_data_scan_flag(p)
    p.add_argument("--no-data", action="store_true",
                   help="check the study's structure only: no dataset or weights file is read, and the resources "
                        "are checked only against --address (plan a study for another machine)")
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


def _add_training_commands(sub) -> None:
    """train, demo."""
    p = _file_command(sub, "train", cmd_train, "train one configuration standalone, one line per epoch",
                      "config", "YAML file with the sections dataset, model, miner, loss, train, eval, seed")
    p.add_argument("--checkpoint-dir", help="keep checkpoints here; rerunning the same command resumes (with more "
                   "train.epochs too; a checkpoint of a different configuration is refused)")
    p.add_argument("--threads", metavar="N", help="torch's compute threads, ≥ 1 (default: OMP_NUM_THREADS if set, else "
                   "one per core this process may use; give 1 when other work shares the machine)")

    p = sub.add_parser("demo", help="short CPU demo: fixed vs adaptive thresholds on digits")
    p.add_argument("--epochs", default=8, metavar="N", help="training epochs of every arm, ≥ 1 (default 8)")
    p.add_argument("--seeds", default=2, metavar="N",
                   help="seeds 0 .. N−1 per arm, ≥ 1; the spread (± sd) needs 2 or more (default 2)")
    p.add_argument("--threads", default=1, metavar="N", help="torch's compute threads, ≥ 1 (default 1: the demo's "
                   "small network gains nothing from more, and loses much on a busy machine)")
    p.set_defaults(func=cmd_demo)


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmltune", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print dmltune's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list components (miners, losses, ...) and configuration sections (train, eval, "
                       "...) with each parameter's type, default, range and meaning")
    p.add_argument("kind", nargs="?", metavar="GROUP",
                   help="only this group: miners, losses, generations, backbones, datasets (components); model, "
                        "transform, train, eval, meta (loss.lam.meta), study, search, asha, tracking (settings; "
                        "tracking.mlflow, tracking.wandb, tracking.optuna alone); default: all")
    p.set_defaults(func=cmd_list)

    _add_study_commands(sub)
    _add_training_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        for line in err.lines:  # several independent problems: one line each
            print(f"dmltune: error: {line}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, StudyInterrupted) as err:
        report_interruption(str(err) or "interrupted")
        return 130
    except StudyFailed as err:
        print(f"dmltune: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full or read-only disk at a write no command turned into its own message
        from .study.disk import disk_stop_message

        message = disk_stop_message(err, "nothing finished is lost: free space (or make it writable), then run the "
                                          "command again")
        if message is None:
            raise
        print(f"dmltune: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
