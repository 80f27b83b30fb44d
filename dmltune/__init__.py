"""dmltune: hyperparameter studies for deep metric learning on Ray Tune."""

from .registry import ConfigError

__version__ = "0.1.0"
__all__ = ["ConfigError", "__version__"]
