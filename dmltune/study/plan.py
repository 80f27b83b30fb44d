"""The plan a study prints before it runs: where it writes, seeds, resources, and each arm's trials."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .tracking import describe as tracking_line

if TYPE_CHECKING:
    from .schema import Study


def plan_lines(study: Study) -> list[str]:
    gpu = study.resources.get("gpu")
    lines = [f"study {study.name} → {study.directory}",
             f"seeds {study.seeds}; per trial {study.resources['cpu']} CPU" + ((", GPU share by backbone" if gpu == "auto" else f", {gpu} GPU") if gpu else "")
             + (f"; at most {study.concurrency} at once" if study.concurrency else "")
             + ("; workers reused between trials" if study.reuse_actors else "")]
    roots = sorted({str(a.config["dataset"].get("root")) for a in study.arms if a.config["dataset"].get("root")})
    for root in roots:
        lines.append(f"data: {root}")
    if study.protocol["validation"] == "kfold":
        k = study.protocol["folds"]
        lines.append(f"validation: class-disjoint {k}-fold cross-validation of the training classes (fold_seed "
                     f"{study.protocol['fold_seed']}): each configuration × seed is {k} trials, one per fold")
    total = 0
    for arm in study.arms:
        n = arm.trials_per_seed * len(study.seeds)
        total += n
        searched = ", ".join(f"{'.'.join(p)} {d.kind} {list(d.values)}" for p, d in arm.domains) or "fixed"
        mode = arm.search["mode"] + (" + ASHA" if arm.search["scheduler"] else "")
        if mode == "pbt":
            mode = f"pbt every {arm.search['perturbation_interval']} ep"
            searched = "population, mutating " + searched
        share = f"   ({arm.gpu(gpu):g} GPU per trial)" if gpu == "auto" else ""
        lines.append(f"  {arm.name:<24} {mode:<15} {n:>4} trials   {searched}{share}")
    from .experiments import stage_entries
    from .stages import stage_trials

    for entry in stage_entries(study):
        n = stage_trials(study, entry)[0]
        total += n
        word = "look" if study.design.kind == "sequential" else "stage"
        lines.append(f"  {word + ' ' + str(entry['stage']) + ' (recorded)':<24} {'':<15} {n:>4} trials   {entry.get('why', '')}")
    lines.append(f"  {'total':<24} {'':<15} {total:>4} trials" + (" so far (later stages are planned as they end)"
                                                                  if study.design.staged else ""))
    if study.design.staged or study.design.budget_trials or study.design.budget_hours is not None:
        lines.append(study.design.describe())
    if tracking_line(study.tracking):
        lines.append(tracking_line(study.tracking))
    return lines
