"""Moved to :mod:`dmltune.training.reporting`; this name stays importable."""

from .training.reporting import ConsoleReporter, TuneReporter, in_tune_session, make_reporter  # noqa: F401
