"""The study report's figures (dmltune.analysis.figures): readable at paper size with nothing clipped,
one named interval per quantity, the report's cost units, overlapping series told apart, n shown and
n < 3 marked, editable SVG text, and the per-epoch validation curves."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from synthetic_study import grid_arm, single_arm

from dmltune.analysis import analyse, plots, study_table
from dmltune.analysis import figures
from dmltune.analysis.figures import style

SECONDS_PER_TRIAL = 6.0
GRID = {(0.05, 0.0): 0.40, (0.05, 0.05): 0.45, (0.1, 0.0): 0.52, (0.1, 0.05): 0.47}
VALUES = {"ms_simp": [0.41, 0.45, 0.42, 0.44], "softcon_at_asms": [0.50, 0.55, 0.49, 0.53],
          "ddtas": [0.50, 0.53, 0.51, 0.56]}


def study_rows(n_seeds: int) -> pd.DataFrame:
    """A 2 × 2 grid, two single arms and the reference ddtas (meta-learned λ), ``n_seeds`` seeds, trials
    of 6 s; the grid and softcon_at_asms hold λ at exactly 0.7 (drawn on top of each other), the MS arm
    reports its fixed ε."""
    seeds = tuple(range(n_seeds))
    noise = {(gp, gn, s): 0.03 * ((s * 7 + int(gp * 100) + int(gn * 100)) % 3 - 1) for (gp, gn) in GRID for s in seeds}
    rows = grid_arm("asms_grid", GRID, seeds=seeds, noise=noise, gpu_s=SECONDS_PER_TRIAL)
    for arm, values in VALUES.items():
        rows += single_arm(arm, values[:n_seeds], gpu_s=SECONDS_PER_TRIAL, lam=0.6 if arm == "ddtas" else None)
    table = pd.DataFrame(rows)
    table.loc[table.arm.isin(["asms_grid", "softcon_at_asms"]), "lam"] = 0.7
    table.loc[table.arm == "ms_simp", "epsilon"] = 0.1
    ddtas = table.arm == "ddtas"
    table.loc[ddtas, "lam_hypergrad_snr"] = np.where(table.epoch[ddtas] == 2, 0.5, 3.0)
    return table


def analysed(n_seeds: int):
    table = study_rows(n_seeds)
    source = {"eval": {"metric": "map@r"}, "arms": [{"name": a} for a in dict.fromkeys(table.arm)]}
    return analyse(study_table(table, source), {"reference": "ddtas", "delta": 0.01, "bootstrap": 200})


@pytest.fixture(scope="module")
def studies():
    return {n: analysed(n) for n in (1, 2, 3)}


def drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def undrawn_tick_labels(fig) -> set[int]:
    """Tick labels that matplotlib keeps but does not draw (their tick is outside the view limits)."""
    out = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, abs(hi - lo))
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if tick.get_loc() is None or not lo - eps <= tick.get_loc() <= hi + eps:
                    out |= {id(tick.label1), id(tick.label2)}
    return out


def texts(fig) -> list[Text]:
    hidden = undrawn_tick_labels(fig)
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def all_text(fig) -> str:
    return "\n".join(t.get_text() for t in texts(fig))


def inside(inner, outer, slack: float = 1.0) -> bool:
    return (inner.x0 >= outer.x0 - slack and inner.y0 >= outer.y0 - slack and inner.x1 <= outer.x1 + slack
            and inner.y1 <= outer.y1 + slack)


def clipping_problems(fig) -> list[str]:
    """Texts past the canvas or on top of each other, value labels straddling their axes' frame, markers
    past the canvas or cut by their axes' clip box."""
    renderer = drawn(fig)
    problems = []
    boxes = [(t, t.get_window_extent(renderer)) for t in texts(fig)]
    for i, (t, box) in enumerate(boxes):
        if not inside(box, fig.bbox):
            problems.append(f"text {t.get_text()!r} at {box.bounds} outside the canvas {fig.bbox.bounds}")
        for other, other_box in boxes[:i]:
            overlap = Bbox.intersection(box, other_box)
            if overlap is not None and overlap.width > 1 and overlap.height > 1:
                problems.append(f"text {t.get_text()!r} overlaps {other.get_text()!r}")
    for ax in fig.axes:
        frame = ax.bbox
        for t in ax.texts:
            box = t.get_window_extent(renderer)
            if t.get_visible() and t.get_text().strip() and not inside(box, frame) and box.overlaps(frame):
                problems.append(f"label {t.get_text()!r} sits on the frame of its axes")
        for line in ax.lines:
            if not line.get_visible() or line.get_marker() in (None, "None", "", " "):
                continue
            xy = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
            xy = xy[np.isfinite(xy).all(axis=1)]
            if not len(xy):
                continue
            points = line.get_transform().transform(xy)
            radius = line.get_markersize() * fig.dpi / 72 / 2
            for x, y in points:
                box = Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)
                limit = frame if line.get_clip_on() else fig.bbox
                if not inside(box, limit, slack=1.5):
                    problems.append(f"marker of {line.get_label()!r} at ({x:.0f}, {y:.0f}) cut by "
                                    f"{'its axes' if line.get_clip_on() else 'the canvas'}")
    return problems


@pytest.mark.parametrize("seeds", [1, 2, 3])
def test_no_text_or_marker_is_clipped_and_figures_fit_a_page(studies, seeds):
    a = studies[seeds]
    for name in figures.FIGURES:
        fig = figures.DRAW[name](a)
        if fig is None:
            continue
        assert fig.get_figwidth() <= style.PAPER_WIDTH + 1e-9, name
        assert not clipping_problems(fig), (name, clipping_problems(fig))
        small = [t.get_text() for t in texts(fig) if t.get_fontsize() < 5]
        assert not small, (name, small)


def test_the_old_test_metric_figure_would_fail_the_clipping_check():
    # the check itself finds what the issue saw: an x-label past the canvas's right edge
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.errorbar([0.2], [0], xerr=[[0.05], [0.05]], fmt="o")
    ax.set_xlabel("test map@r at the configuration selected on validation (mean, 95% CI over seeds) " * 2)
    assert any("outside the canvas" in p for p in clipping_problems(fig))


def test_svg_figures_keep_their_text_editable(studies, tmp_path):
    written = plots.save_figures(studies[3], tmp_path)
    assert set(written) >= {"best_so_far", "heatmaps", "validation_curves", "trajectories", "mined_pairs",
                            "test_metric", "similarity_histograms"}
    for name, png in written.items():
        assert png == tmp_path / f"{name}.png" and png.stat().st_size > 1000
        svg = (tmp_path / f"{name}.svg").read_text()
        assert "<text" in svg, name
        assert not re.search(r'id="DejaVuSans-[0-9a-f]+"', svg), name   # no glyphs drawn as paths


@pytest.mark.parametrize("name", figures.FIGURES)
def test_every_figure_shows_n_and_marks_fewer_than_three_seeds(studies, name):
    fig = figures.DRAW[name](studies[2])
    if fig is None:
        assert name == "pbt_schedule"
        return
    text = all_text(fig)
    assert "n = 2" + style.FEW_MARK in text and "n < 3" in text, (name, text)
    fig3 = figures.DRAW[name](studies[3])
    text3 = all_text(fig3)
    assert "n = 3" in text3 and style.FEW_MARK not in text3 and "n < 3" not in text3, (name, text3)
    one = all_text(figures.DRAW[name](studies[1]))
    assert "n = 1" + style.FEW_MARK in one or "n = 0" in one, (name, one)


KINDS = {"best_so_far": "bootstrap", "heatmaps": "Student-t", "validation_curves": "Student-t",
         "trajectories": "Student-t", "mined_pairs": "Student-t", "test_metric": "Student-t"}


@pytest.mark.parametrize("name", figures.FIGURES)
def test_captions_and_figures_name_one_kind_of_interval(studies, name):
    a = studies[3]
    text = figures.caption(name, a)
    if name in KINDS:
        other = {"bootstrap": "Student-t", "Student-t": "bootstrap"}[KINDS[name]]
        assert f"95% {KINDS[name]}" in text and other not in text, text
        assert f"95% {KINDS[name]}" in all_text(figures.DRAW[name](a))
    else:
        assert "No interval" in text
    assert "n < 3" in text and "careful tuning" not in text.replace("not evidence that the thresholds need careful "
                                                                     "tuning", "")


def errorbar_extents(ax, label_start: str):
    """(x, low, high) in data units of the error bar whose marker line's label starts with label_start."""
    for container in ax.containers:
        if container.get_label().startswith(label_start):
            marker, _, (bars,) = container
            seg = bars.get_segments()[0]
            return float(marker.get_xdata()[0]), float(seg[:, 1].min()), float(seg[:, 1].max())
    raise AssertionError(f"no error bar labelled {label_start}")


def test_best_so_far_points_carry_the_tables_bootstrap_interval_in_seconds(studies):
    a = studies[3]
    fig = plots.best_so_far_figure(a)
    ax = fig.axes[0]
    eb = a.expected_best
    for arm in ("ms_simp", "softcon_at_asms", "ddtas"):
        row = eb[(eb.arm == arm) & (eb.trials == 1)].iloc[0]
        x, low, high = errorbar_extents(ax, arm)
        assert (low, high) == pytest.approx((row.low, row.high), abs=1e-9)     # the table's bootstrap interval
        t = a.selections[arm].val
        assert (low, high) != pytest.approx((t.mean - t.half, t.mean + t.half), abs=1e-6)  # not the t-interval
        assert x == pytest.approx(SECONDS_PER_TRIAL)                            # seconds, as report.md
    assert "(s)" in ax.get_xlabel() and "hour" not in ax.get_xlabel()
    (line,) = [l for l in ax.lines if l.get_label().startswith("asms_grid")]
    grid = eb[eb.arm == "asms_grid"]
    np.testing.assert_allclose(line.get_xdata(), grid.trials * SECONDS_PER_TRIAL)
    np.testing.assert_allclose(line.get_ydata(), grid.expected_best)


def test_best_so_far_error_bars_at_the_same_cost_are_set_apart(studies):
    fig = plots.best_so_far_figure(studies[3])
    drawn(fig)
    ax = fig.axes[0]
    xs = []
    for container in ax.containers:
        marker = container[0]
        xs.append(marker.get_transform().transform([[marker.get_xdata()[0], marker.get_ydata()[0]]])[0, 0])
    assert len(xs) == 3 and min(np.diff(sorted(xs))) >= 4      # pixels apart, though all cost 6 s


def test_costs_of_hours_are_drawn_in_hours():
    assert style.cost_scale([2.0, 0.5]) == (1.0, "h")
    assert style.cost_scale([0.5]) == (60.0, "min")
    assert style.cost_scale([6 / 3600]) == (3600.0, "s")


def test_trajectories_tell_overlapping_arms_apart_and_show_the_fixed_epsilon(studies):
    fig = plots.trajectories_figure(studies[3])
    drawn(fig)
    panels = {ax.get_ylabel().split(" ")[0]: ax for ax in fig.axes}
    assert {"λ", "ε"} <= set(panels)
    lam = panels["λ"]
    labels = [t.get_text() for t in lam.get_legend().get_texts()]
    assert any(l.startswith("asms_grid") and "overlaps softcon_at_asms" in l for l in labels), labels
    heights = {}
    for line in lam.lines:
        if line.get_label().startswith(("asms_grid", "softcon_at_asms")):
            heights[line.get_label()] = line.get_transform().transform([[1, 0.7]])[0, 1]
    assert len(heights) == 2 and abs(np.diff(list(heights.values())))[0] >= 2     # drawn apart on the page
    eps = panels["ε"]
    assert [l.get_label().split(" ")[0] for l in eps.lines] == ["ms_simp"]
    np.testing.assert_allclose(eps.lines[0].get_ydata(), 0.1)


def test_heatmap_cells_show_their_interval_and_n_and_the_scale_is_no_finer_than_the_noise(studies):
    a = studies[3]
    cells = figures.heatmaps.data(a)
    fig = plots.heatmaps_figure(a)
    ax = fig.axes[0]
    cell_texts = [t.get_text() for t in ax.texts]
    shape = re.compile(r"± \d\.\d{3}\nn = 3(\nshort|\nmatches)?$")
    assert len(cell_texts) == len(GRID) and all(shape.search(t) for t in cell_texts), cell_texts
    halves = (cells["high"] - cells["low"]) / 2
    (image,) = ax.images
    low, high = image.get_clim()
    assert high - low >= float(np.median(2 * halves)) - 1e-9
    # the cells the verdict leaves undecided are hatched, those it shows short are not; the legend says why
    v, delta = a.verdicts["asms_grid"], a.settings["delta"]
    undecided = (v.lower < -delta) & (v.upper >= -delta)
    assert 0 < undecided.sum() < len(GRID) and (cells.decision == "undecided").sum() == undecided.sum()
    assert len([p for p in ax.patches if p.get_hatch()]) == undecided.sum()
    short = (v.upper < -delta)
    assert sum(t.endswith("\nshort") for t in cell_texts) == short.sum() > 0
    assert "undecided" in all_text(fig)
    one = [t.get_text() for t in plots.heatmaps_figure(studies[1]).axes[0].texts]
    assert all(t.endswith("n = 1" + style.FEW_MARK) and "no interval" in t for t in one), one


def test_mined_pairs_name_their_log_axis_have_a_title_and_a_band_over_seeds(studies):
    fig = plots.mined_pairs_figure(studies[3])
    assert fig._suptitle is not None and fig._suptitle.get_text()
    for ax in fig.axes:
        assert ax.get_yscale() == "symlog" and "log scale" in ax.get_ylabel()
        assert any(isinstance(c, PolyCollection) for c in ax.collections)     # spread over seeds


def test_similarity_histograms_have_no_empty_panel_one_y_scale_and_a_legend_for_every_colour(studies):
    fig = plots.similarity_histograms_figure(studies[3])
    assert len(fig.axes) == 4 and all(ax.get_visible() for ax in fig.axes)   # 4 arms: 2 × 2, not 3 + 1 empty
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["positive pairs (filled)", "negative pairs (outline)"]
    for ax in fig.axes:  # only the positives are filled: no third, mixed colour where they overlap
        assert [p.get_fill() for p in ax.patches] == [True, False]


def test_test_metric_draws_no_interval_for_one_seed_and_no_legend_promising_one(studies):
    fig = plots.test_metric_figure(studies[1])
    ax = fig.axes[0]
    assert ax.get_legend() is None and not fig.legends
    for container in ax.containers:
        segments = container[2][0].get_segments()
        assert all(np.ptp(seg[:, 0]) == 0 for seg in segments)                # zero-length bars
    assert all("no interval" in t.get_text() for t in ax.texts)


def test_validation_curves_show_each_arm_with_a_band_over_seeds(studies):
    a = studies[3]
    table = figures.validation_curves.data(a)
    assert set(table.arm) == set(a.table.arms) and (table.n == 3).all()
    fig = plots.validation_curves_figure(a)
    assert [ax.get_title() for ax in fig.axes] == [f"{arm} (n = 3 seeds)" for arm in a.table.arms]
    for ax in fig.axes:
        assert any(isinstance(c, PolyCollection) for c in ax.collections)
    assert "Student-t" in all_text(fig)
    grid = table[table.arm == "asms_grid"].set_index("epoch")
    trials = a.selections["asms_grid"].trials
    last = grid.loc[grid.index.max(), "mean"]
    assert last == pytest.approx(trials[a.table.metric].mean())               # the selection's own values
    one = plots.validation_curves_figure(studies[1])
    assert not any(isinstance(c, PolyCollection) for ax in one.axes for c in ax.collections)


def test_plots_keeps_its_names_and_every_figure_is_a_module_over_a_tidy_table(studies):
    for name in figures.FIGURES:
        assert callable(getattr(plots, f"{name}_figure"))
    for module in figures.MODULES:
        assert isinstance(module.data(studies[3]), pd.DataFrame)
        assert {"data", "draw", "figure", "caption"} <= set(vars(module))


def test_pbt_schedule_shows_members_and_seeds_and_fits_the_page():
    from synthetic_study import trial_rows

    rows = []
    for seed in range(3):
        for member in range(2):
            member_rows = trial_rows("pbt", f"pbt_s{seed}", f"p{seed}_{member}", seed, 0.5 + 0.02 * member, 0.4,
                                     gpu_s=SECONDS_PER_TRIAL, gamma=0.1)
            for r in member_rows:
                r["schedule/miner.gamma_pos"] = 0.1 if r["epoch"] < 2 else 0.1 + 0.05 * member
            rows += member_rows
    rows += single_arm("ddtas", [0.50, 0.53, 0.51], gpu_s=SECONDS_PER_TRIAL, lam=0.6)
    source = {"eval": {"metric": "map@r"}, "arms": [{"name": "pbt", "search": {"mode": "pbt"}}, {"name": "ddtas"}]}
    a = analyse(study_table(pd.DataFrame(rows), source), {"reference": "ddtas", "bootstrap": 200})
    table = figures.pbt_schedule.data(a)
    assert set(table.kind) == {"member", "selected", "other arm"}
    fig = plots.pbt_schedule_figure(a)
    assert fig.get_figwidth() <= style.PAPER_WIDTH and not clipping_problems(fig)
    assert "2 members per seed, n = 3 seeds" in all_text(fig) and "No interval" in figures.caption("pbt_schedule", a)
