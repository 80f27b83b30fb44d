"""train.compile: torch.compile of the backbone's forward agrees with eager mode (CPU, fp32).

Tolerances: one forward and backward of the same model on the same batch agree to 1e-4 (outputs)
and, for gradients, to 1e-3 of each tensor's largest entry; a whole one-epoch trial's loss to 1e-3 relative and its validation
MAP@R to 0.01 (compiled kernels sum in another order, and training compounds the rounding).
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from dmltune.config import resolve_config
from dmltune.registry import ConfigError
from dmltune.training import train
from dmltune.training.reporting import ConsoleReporter
from dmltune.training.runtime import compile_backbone
from trial_helpers import tiny_config


@pytest.mark.parametrize("given, resolved", [(False, "false"), (True, "true"), ("max-autotune", "max-autotune"),
                                             ("true", "true")])
def test_compile_takes_yaml_booleans_and_max_autotune(given, resolved):
    assert resolve_config(tiny_config(train__compile=given))["train"]["compile"] == resolved
    assert resolve_config(tiny_config())["train"]["compile"] == "false"  # eager unless asked


@pytest.mark.parametrize("given", ["yes", 1, "max_autotune"])
def test_other_compile_values_are_refused_with_the_choices(given):
    with pytest.raises(ConfigError, match="compile.*'false', 'true', 'max-autotune'"):
        resolve_config(tiny_config(train__compile=given))


def test_booleans_are_still_refused_where_no_choice_is_named_true():
    with pytest.raises(ConfigError, match="'amp' must be one of 'auto', 'bf16', 'off', got True"):
        resolve_config(tiny_config(train__amp=True))


def test_compile_with_the_full_meta_look_ahead_is_refused_before_training():
    cfg = tiny_config(train__compile=True)
    cfg["loss"]["lam"] = {"meta": {"scope": "full"}}
    with pytest.raises(ConfigError, match="train.compile = true cannot be combined with loss.lam.meta.scope full"):
        resolve_config(cfg)
    cfg["loss"]["lam"] = {"meta": {"scope": "head"}}
    assert resolve_config(cfg)["train"]["compile"] == "true"


def _model(seed: int):
    from dmltune.models import build_model

    torch.manual_seed(seed)
    return build_model("small_cnn", dim=16, freeze_bn=False, in_channels=1)


@pytest.mark.slow
def test_a_compiled_backbone_computes_what_the_eager_one_does():
    eager, compiled = _model(0), _model(0)
    compile_backbone(compiled, "true")
    assert compiled.backbone._compiled_call_impl is not None and eager.backbone._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints load either way
    x = torch.randn(24, 1, 28, 28)
    out_e, out_c = eager(x), compiled(x)
    torch.testing.assert_close(out_c, out_e, atol=1e-4, rtol=1e-4)
    (out_e ** 3).sum().backward()
    (out_c ** 3).sum().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters()):
        assert (p_c.grad - p_e.grad).abs().max() <= 1e-3 * p_e.grad.abs().max(), name
    x_eval = torch.randn(7, 1, 28, 28)  # another batch size (evaluation's last batch)
    torch.testing.assert_close(compiled.eval()(x_eval), eager.eval()(x_eval), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_compiled_trial_agrees_with_an_eager_one():
    from torch._dynamo.utils import counters

    results, graphs = {}, {}
    for mode in ("false", "true"):
        counters.clear()
        reporter = ConsoleReporter(tempfile.mkdtemp())
        results[mode] = train(tiny_config(train__epochs=1, train__compile=mode), reporter=reporter)
        graphs[mode] = counters["stats"]["unique_graphs"]
    assert graphs == {"false": 0, "true": graphs["true"]} and graphs["true"] >= 1  # it really was compiled
    eager, compiled = results["false"], results["true"]
    assert compiled["status"] == "ok"
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    assert compiled["val/map@r"] == pytest.approx(eager["val/map@r"], abs=0.01)


def test_a_compile_value_written_as_boolean_or_text_is_one_configuration_in_the_analysis():
    import numpy as np

    from dmltune.analysis.importance import _same

    assert _same(False, "false") and _same(np.bool_(True), "true") and _same("true", True)
    assert not _same(True, "false") and not _same(True, 1) and _same(0.1, 0.1 + 1e-12)
