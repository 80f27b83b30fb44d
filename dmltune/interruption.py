"""The exceptions that end a study early, kept light so the CLI can import them."""


class StudyInterrupted(Exception):
    """Ray Tune stopped an arm early (Ctrl-C / SIGINT): the later arms are not started."""


class StudyFailed(Exception):
    """The study cannot go on (its folder was deleted, the disk is full): one line, exit code 1."""
