"""PBT arms: the value of each mutated threshold that every population member trained with, per epoch,
beside the other arms' trajectories of the same threshold."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..compare import Analysis
from . import style
from .tables import StudyFacts, epoch_bands, facts

NAME = "pbt_schedule"
SCHEDULE_PREFIX = "schedule/"
REPORTED_AS = {"loss.lam": "lam", "miner.gamma_pos": "gamma_pos", "miner.gamma_neg": "gamma_neg",
               "miner.epsilon": "epsilon"}
COLUMNS = ["parameter", "arm", "trial_id", "seed", "epoch", "value", "kind"]


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: ``parameter, arm, trial_id, seed, epoch, value, kind`` — kind "member" or "selected" (a
    population member's schedule), or "other arm" (another arm's epoch mean of the same threshold)."""
    st = analysis.table
    columns = sorted(c for c in st.per_epoch.columns if c.startswith(SCHEDULE_PREFIX) and st.per_epoch[c].notna().any())
    frames = []
    for column in columns:
        key = column[len(SCHEDULE_PREFIX):]
        rows = st.per_epoch[st.per_epoch[column].notna()]
        chosen = {arm: set(analysis.selections[arm].trials.get("trial_id", [])) if arm in analysis.selections else set()
                  for arm in set(rows.arm)}
        kind = [("selected" if t in chosen[a] else "member") for a, t in zip(rows.arm, rows.trial_id)]
        frames.append(pd.DataFrame({"parameter": key, "arm": rows.arm.to_numpy(), "trial_id": rows.trial_id.to_numpy(),
                                    "seed": rows.seed.to_numpy(), "epoch": rows.epoch.to_numpy(),
                                    "value": rows[column].to_numpy(dtype=float), "kind": kind}))
        if key in REPORTED_AS:
            others = epoch_bands(analysis, REPORTED_AS[key])
            others = others[~others.arm.isin(set(rows.arm))]
            frames.append(pd.DataFrame({"parameter": key, "arm": others.arm.to_numpy(), "trial_id": None,
                                        "seed": others.n.to_numpy(), "epoch": others.epoch.to_numpy(),
                                        "value": others["mean"].to_numpy(dtype=float), "kind": "other arm"}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table.empty:
        return None
    looks = style.arm_styles(f.arms)
    keys = list(dict.fromkeys(table.parameter))
    fig, axes = style.grid(len(keys), 3.5, 2.9)
    for ax, key in zip(axes, keys):
        rows = table[table.parameter == key].sort_values("epoch")
        members = rows[rows.kind != "other arm"]
        for arm, group in members.groupby("arm", sort=False):
            colour = looks.get(arm, {"color": "grey"})["color"]
            per_seed = group.groupby("seed").trial_id.nunique()
            size = f"{per_seed.min()}" if per_seed.min() == per_seed.max() else f"{per_seed.min()}–{per_seed.max()}"
            label = f"{arm}: {size} members per seed, {style.n_text(len(per_seed))} seeds (thick: selected)"
            for i, (_, member) in enumerate(group.groupby("trial_id", sort=True)):
                best = (member.kind == "selected").any()
                ax.plot(member.epoch, member.value, color=colour, drawstyle="steps-post",
                        linewidth=2.0 if best else 0.8, alpha=1.0 if best else 0.5, label=label if i == 0 else None)
        for arm, other in rows[rows.kind == "other arm"].groupby("arm", sort=False):
            ax.plot(other.epoch, other.value, linestyle="--", color=looks[arm]["color"],
                    label=f"{arm} (epoch mean, {style.n_text(int(other.seed.max()))})")
        style.epoch_axis(ax)
        ax.set_ylabel(key)
        ax.margins(y=0.1)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    fig.suptitle("PBT schedules: each member's thresholds per epoch")
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    return ("Population Based Training arms: the value of each mutated threshold that every member of the population "
            "trained with, per epoch (steps where an exploit or explore changed it; thick: the members selected on "
            "validation; the legend gives members and seeds n, † marks n < 3), with the other arms' epoch means of "
            "the same threshold dashed where they report one. No interval: each line is one member's schedule.")
