"""Ray Tune's Weights & Biases logger as dmltune uses it (see :mod:`.tracking`): one W&B run per
trial, made by Ray's ``WandbLoggerCallback`` in a small logging process per trial, with two changes:

* the W&B mode of the study file reaches Ray's credential check (Ray reads only ``WANDB_MODE``, so an
  offline study would otherwise be refused for want of an API key it does not need);
* epochs a resumed trial reports again (``replayed``) were logged in the earlier session and are
  not logged twice (with ``resume="allow"``, an online run continues where it stopped).
"""

from __future__ import annotations

import os

from ray.air.integrations.wandb import WandbLoggerCallback


class DmltuneWandbLogger(WandbLoggerCallback):
    """Ray's W&B logger: the study's mode honoured at set-up, replayed epochs left out."""

    def setup(self, *args, **kwargs):
        mode = self.kwargs.get("mode")
        if mode not in ("offline", "disabled"):
            return super().setup(*args, **kwargs)
        before = os.environ.get("WANDB_MODE")
        os.environ["WANDB_MODE"] = mode  # what Ray's check reads (the logging processes get mode=)
        try:
            return super().setup(*args, **kwargs)
        finally:
            if before is None:
                os.environ.pop("WANDB_MODE", None)
            else:
                os.environ["WANDB_MODE"] = before

    def log_trial_result(self, iteration: int, trial, result: dict):
        if result.get("replayed"):
            return
        super().log_trial_result(iteration, trial, result)
