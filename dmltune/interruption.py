"""The exception for a study stopped by the user (Ctrl-C), kept light so the CLI can import it."""


class StudyInterrupted(Exception):
    """Ray Tune stopped an arm early (Ctrl-C / SIGINT): the later arms are not started."""
