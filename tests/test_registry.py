"""The component registry: declared parameters are enforced with one-line, actionable errors."""

import pytest
import torch

from dmltune.registry import Component, ConfigError, Param, Registry


def make_registry():
    reg = Registry("widget")

    @reg.register(
        "spring",
        Param("stiffness", float, 1.0, low=0.0, high=10.0),
        Param("coils", int, 3, low=1),
        Param("shape", str, "round", choices=("round", "square")),
        Param("damped", bool, False),
        Param("lam", float, 0.5, low=-1.0, high=1.0, tensor_ok=True),
        Param("label", str, None, nullable=True),
    )
    def spring(**kwargs):
        """A spring with declared parameters."""
        return kwargs

    return reg


def test_defaults_are_filled_and_ints_widen_to_float():
    built = make_registry().build("spring", {"stiffness": 2})
    assert built == {"stiffness": 2.0, "coils": 3, "shape": "round", "damped": False, "lam": 0.5, "label": None}
    assert isinstance(built["stiffness"], float)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"stifness": 1.0}, "did you mean 'stiffness'"),
        ({"stiffness": 11.0}, "outside its valid range [0, 10]"),
        ({"stiffness": "1"}, "must be a number"),
        ({"stiffness": True}, "must be a number"),
        ({"stiffness": float("nan")}, "must be finite"),
        ({"coils": 2.5}, "must be an integer"),
        ({"coils": 0}, "outside its valid range [1, inf]"),
        ({"shape": "rond"}, "did you mean 'round'"),
        ({"damped": 1}, "must be true or false"),
        ({"lam": torch.ones(2)}, "scalar tensor"),
        ({"lam": torch.tensor(3.0)}, "outside its valid range"),
        ({"stiffness": None}, "may not be empty"),
    ],
)
def test_bad_values_raise_one_line_errors(values, fragment):
    with pytest.raises(ConfigError) as info:
        make_registry().build("spring", values)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith("widget 'spring'")


def test_tensor_parameter_passes_through_unchanged():
    lam = torch.tensor(0.3, requires_grad=True)
    assert make_registry().build("spring", {"lam": lam})["lam"] is lam


def test_unknown_component_lists_choices():
    reg = make_registry()
    with pytest.raises(ConfigError, match=r"unknown widget 'sprang' \(did you mean 'spring'\?\); valid choices: spring"):
        reg.build("sprang")
    assert "sprang" not in reg and "spring" in reg
    assert reg.get("sprang") is None
    assert isinstance(reg["spring"], Component)
    assert list(reg) == ["spring"] and len(reg) == 1


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid parameters: stiffness, coils, shape, damped, lam, label"):
        make_registry().build("spring", {"colour": "red"})


def test_double_registration_is_refused():
    reg = make_registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("spring")(lambda: None)


def test_summary_comes_from_docstring_and_plural_defaults():
    reg = make_registry()
    assert reg["spring"].help == "A spring with declared parameters."
    assert reg.plural == "widgets"
    assert Registry("loss", "losses").plural == "losses"


def test_cli_list_and_config_error_exit_code(capsys):
    from dmltune.cli import main

    assert main(["list", "miners"]) == 0
    out = capsys.readouterr().out
    assert "at_asms" in out and "count_neg_with" in out and "soft_contrastive" not in out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "losses:" in out and "soft_contrastive" in out


def test_build_passes_runtime_context_unchecked_beside_validated_parameters():
    reg = Registry("part")

    @reg.register("sized", Param("scale", float, 1.0, low=0.0))
    def sized(size, scale):
        return size * scale

    assert reg.build("sized", {"scale": 2}, size=3) == 6.0
    assert reg.build("sized", size=4) == 4.0  # parameters default
    with pytest.raises(ConfigError, match="outside its valid range"):
        reg.build("sized", {"scale": -1.0}, size=3)
    with pytest.raises(ConfigError, match="parameters must be a mapping"):
        reg.build("sized", [("scale", 2.0)], size=3)
