"""Study files, their validation, and running them with Ray Tune."""

from .schema import Arm, Study, load_study, parse_study

__all__ = ["Arm", "Study", "load_study", "parse_study"]
