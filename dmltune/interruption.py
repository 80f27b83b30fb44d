"""The exceptions that end a study early, kept light so the CLI can import them."""


class StudyInterrupted(Exception):
    """Ray Tune stopped an arm early (Ctrl-C / SIGINT): the later arms are not started."""


class StudyFailed(Exception):
    """The study cannot go on (its folder was deleted, the disk is full): one line, exit code 1."""


STOP_GRACE_S = 60.0  # after Ctrl-C, how long the driver may take to write the table and stop Ray
_reported = False


def report_interruption(message: str) -> None:
    """The one line a Ctrl-C'd driver prints (once, whichever of the CLI and the watchdog comes first)."""
    import sys

    global _reported
    if not _reported:
        _reported = True
        print(f"dmltune: {message}", file=sys.stderr, flush=True)


def exit_if_stuck(message: str, seconds: float = STOP_GRACE_S) -> None:
    """After Ctrl-C, end this process within ``seconds`` whatever happens: writing the table so far,
    Ray's shutdown or the interpreter's exit can hang when the interrupt landed inside Ray (seen under
    load). A driver still alive then prints its one line and exits 130; what it leaves is what a
    killed driver leaves, which ``dmltune resume`` continues."""
    import os
    import threading

    def stop() -> None:
        report_interruption(message)
        os._exit(130)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
