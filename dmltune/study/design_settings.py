"""The study's ``design`` and ``budget`` keys (docs/studies.md, "Designs"; docs/analysis.md, "Designs").

    design: fixed                  # default: every configuration on every seed
    design:
      two_stage: {select_seeds: 3, confirm_seeds: auto, max_confirm_seeds: 30}
    design:
      sequential: {looks: [3, 5, 8, 12, 20], max_seeds: 20}
    budget: {trials: 200}          # or {gpu_hours: 12}: no stage or look starts beyond it

Stage 1 (two_stage) and the first look (sequential) run the first ``select_seeds`` / ``looks[0]`` of
the study's ``seeds``; later stages and looks use fresh seeds: the study's remaining seeds, then the
integers after the largest of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import Component, ConfigError, Param, short_repr

DESIGNS = ("fixed", "two_stage", "sequential")
TWO_STAGE = Component("design", "two_stage", dict, (
    Param("select_seeds", int, None, low=1, high=1000, nullable=True,
          help="seeds of stage 1, where every arm's grid or search runs (default: all of the study's seeds)"),
    Param("confirm_seeds", object, "auto", help="fresh seeds of stage 2: auto (sized for the power) or a number"),
    Param("max_confirm_seeds", int, 30, low=2, high=1000, help="at most this many seeds in stage 2 (auto)"),
))
SEQUENTIAL = Component("design", "sequential", dict, (
    Param("looks", list, [3, 5, 8, 12, 20], help="seeds per configuration at each look, increasing"),
    Param("max_seeds", int, None, low=1, high=1000, nullable=True,
          help="no configuration runs more seeds than this (default: the last look)"),
))
BUDGET = Component("section", "budget", dict, (
    Param("trials", int, None, low=1, nullable=True, help="no stage or look starts once this many trials are planned"),
    Param("gpu_hours", float, None, low=0.0, nullable=True,
          help="no stage or look starts once the trials so far cost this much (GPU-hours, or wall-hours on CPU)"),
))
EXAMPLE = "design: {two_stage: {select_seeds: 3, confirm_seeds: auto}}"


@dataclass(frozen=True)
class Design:
    kind: str = "fixed"
    select_seeds: int | None = None
    confirm_seeds: int | None = None          # None: auto
    max_confirm_seeds: int = 30
    looks: tuple = ()
    max_seeds: int | None = None
    budget_trials: int | None = None
    budget_hours: float | None = None
    settings: dict = field(default_factory=dict)

    @property
    def staged(self) -> bool:
        return self.kind != "fixed"

    def first_seeds(self, seeds: list) -> list:
        """The seeds of stage 1 / the first look."""
        if self.kind == "two_stage" and self.select_seeds:
            return list(seeds[:self.select_seeds])
        if self.kind == "sequential":
            return seed_sequence(seeds, self.looks[0])
        return list(seeds)

    def describe(self) -> str:
        if self.kind == "two_stage":
            confirm = "auto" if self.confirm_seeds is None else self.confirm_seeds
            text = (f"design two_stage: stage 1 on {self.select_seeds or 'every'} seed(s), then each arm's selected "
                    f"configuration and the reference on fresh seeds (confirm_seeds {confirm}, at most "
                    f"{self.max_confirm_seeds})")
        elif self.kind == "sequential":
            text = f"design sequential: looks at {list(self.looks)} seeds (at most {self.max_seeds}), α/{len(self.looks)} per look"
        else:
            text = "design fixed: every configuration on every seed"
        if self.budget_trials:
            text += f"; budget {self.budget_trials} trials"
        if self.budget_hours is not None:
            text += f"; budget {self.budget_hours:g} hours"
        return text


def seed_sequence(seeds: list, n: int) -> list:
    """The first ``n`` seeds of the study's order: its ``seeds``, then the integers after the largest."""
    out = list(seeds[:n])
    nxt = max(seeds) + 1 if seeds else 0
    while len(out) < n:
        out.append(nxt)
        nxt += 1
    return out


def parse_design(raw, budget=None, seeds: list | None = None) -> Design:
    """The validated design; a one-line error names the key and the fix."""
    seeds = list(seeds or [0])
    if raw is None or raw == "fixed" or raw == {"fixed": None} or raw == {"fixed": {}}:
        kind, params = "fixed", {}
    elif isinstance(raw, str):
        raise ConfigError(f"design: unknown design {raw!r}; use one of {', '.join(DESIGNS)} (e.g. {EXAMPLE})")
    elif isinstance(raw, dict) and len(raw) == 1:
        kind, params = next(iter(raw.items()))
        if kind not in DESIGNS:
            from ..registry import _did_you_mean

            raise ConfigError(f"design: unknown design {kind!r}{_did_you_mean(str(kind), DESIGNS)}; "
                              f"use one of {', '.join(DESIGNS)} (e.g. {EXAMPLE})")
        params = params or {}
    else:
        raise ConfigError(f"design must be one of {', '.join(DESIGNS)} or a mapping with one of them, got "
                          f"{short_repr(raw)} (e.g. {EXAMPLE})")
    budget_values = BUDGET.validate(budget or {}, where="budget") if budget is not None else BUDGET.defaults
    if budget is not None and not isinstance(budget, dict):
        raise ConfigError(f"budget must be a mapping like {{trials: 200}} or {{gpu_hours: 12}}, got {short_repr(budget)}")
    common = dict(budget_trials=budget_values["trials"], budget_hours=budget_values["gpu_hours"])
    if kind == "fixed":
        if params:
            raise ConfigError("design: fixed takes no settings; write `design: fixed`")
        return Design("fixed", **common)
    if kind == "two_stage":
        p = TWO_STAGE.validate(params, where="design.two_stage")
        if p["select_seeds"] is not None and p["select_seeds"] > len(seeds):
            raise ConfigError(f"design.two_stage.select_seeds is {p['select_seeds']} but the study lists "
                              f"{len(seeds)} seed(s); list more seeds or lower select_seeds")
        confirm = str(p["confirm_seeds"]).strip()
        if confirm == "auto":
            n_confirm = None
        else:
            try:
                n_confirm = int(confirm)
            except ValueError:
                n_confirm = 0
            if n_confirm < 2 or str(n_confirm) != confirm:
                raise ConfigError(f"design.two_stage.confirm_seeds must be auto or a whole number ≥ 2, got {confirm!r}")
        return Design("two_stage", p["select_seeds"], n_confirm, p["max_confirm_seeds"], **common, settings=p)
    p = SEQUENTIAL.validate(params, where="design.sequential")
    looks = p["looks"]
    if not looks or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in looks) \
            or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ConfigError(f"design.sequential.looks must be increasing whole numbers ≥ 2 (seeds at each look), got "
                          f"{short_repr(looks)}; e.g. [3, 5, 8, 12, 20]")
    max_seeds = p["max_seeds"] or looks[-1]
    looks = tuple(n for n in looks if n <= max_seeds) or (looks[0],)
    return Design("sequential", looks=looks, max_seeds=max_seeds, **common, settings=p)


def design_of(source: dict) -> Design:
    """The design recorded in a study file (fixed when absent or unreadable: old folders)."""
    try:
        return parse_design(source.get("design"), source.get("budget"), source.get("seeds") or [0])
    except ConfigError:
        return Design()


__all__ = ["BUDGET", "DESIGNS", "Design", "design_of", "parse_design", "seed_sequence"]
