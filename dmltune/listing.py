"""What ``dmltune list`` prints: every registry (miners, losses, …) and every configuration section,
each parameter with its type, default, valid range and help, in aligned columns."""

from __future__ import annotations

from .registry import Registry


def _registries() -> list[Registry]:
    from .data import DATASETS
    from .generation import GENERATORS
    from .models import BACKBONES
    from .pairs import LOSSES, MINERS

    return [MINERS, LOSSES, GENERATORS, BACKBONES, DATASETS]


def _sections() -> list[tuple]:
    """Configuration sections ``dmltune list`` shows: (names of the group, title, declaration)."""
    from .config import EVAL, META, TRAIN
    from .data.transforms import TRANSFORM
    from .models.model_section import MODEL
    from .study.schema import ASHA, SEARCH, STUDY
    from .study.tracking import MLFLOW, OPTUNA, TRACKING, WANDB

    return [
        (("model",), "model (the embedding model)", MODEL),
        (("transform", "dataset.transform"), "dataset.transform (image size and augmentation)", TRANSFORM),
        (("train",), "train (optimisation, batches, checkpoints, device)", TRAIN),
        (("eval",), "eval (evaluation cadence and metrics)", EVAL),
        (("meta", "lam", "loss.lam.meta"), "loss.lam.meta (meta-learned threshold λ)", META),
        (("study",), "study (top-level keys of a study file)", STUDY),
        (("search", "arms.search"), "arms[].search (how an arm's search domains are explored)", SEARCH),
        (("asha", "search.scheduler.asha"), "arms[].search.scheduler.asha (early stopping)", ASHA),
        (("tracking",), "tracking (optional: experiment tracking)", TRACKING),
        (("tracking.mlflow", "tracking", "mlflow"), "tracking.mlflow (optional: log every trial to MLflow)", MLFLOW),
        (("tracking.wandb", "tracking", "wandb"), "tracking.wandb (optional: log every trial to Weights & Biases)",
         WANDB),
        (("tracking.optuna", "tracking", "optuna"),
         "tracking.optuna (optional: optuna arms' searches in a database optuna-dashboard opens)", OPTUNA),
    ]


# widest a column of `dmltune list` grows before its text wraps (name and type never wrap)
_DEFAULT_WIDTH, _RANGE_WIDTH, _MIN_HELP_WIDTH = 20, 24, 36


def _list_width() -> int:
    import shutil

    return max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))  # 120 when piped


def _wrap(text: str, width: int, break_long_words: bool = True) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=break_long_words) or [""]


def format_params(title: str, components: list[tuple[str | None, str, tuple]], width: int | None = None) -> str:
    """A listing: ``title:``, then per component its name and summary (when named) and one row per
    parameter: name, type, default, valid range, help. Column widths come from the content (default
    and range capped, wrapping inside their column), so every row lines up; help wraps at ``width``."""
    width = width or _list_width()
    params = [p for _, _, ps in components for p in ps]
    indent = 4 if any(name for name, _, _ in components) else 2
    name_w = max([len(n) + 2 for n, _, _ in components if n] + [len(p.name) + indent for p in params] + [0])
    kind_w = max([len(p.kind.__name__) for p in params] + [0])
    default_w = min(max([len(f"default {p.default!r}") for p in params] + [0]), _DEFAULT_WIDTH)
    range_w = min(max([len(p.describe_range()) for p in params] + [0]), _RANGE_WIDTH)
    help_col = name_w + 2 + kind_w + 2 + default_w + 2 + range_w + 2
    help_w = max(width - help_col, _MIN_HELP_WIDTH)
    lines = [f"{title}:"]
    for name, summary, ps in components:
        if name:
            text = _wrap(summary, max(width - name_w - 2, _MIN_HELP_WIDTH))
            lines.append(f"  {name:<{name_w - 2}}  {text[0]}".rstrip())
            lines += [" " * (name_w + 2) + t for t in text[1:]]
        for p in ps:
            default, help = _wrap(f"default {p.default!r}", default_w, break_long_words=False), p.help
            if any(len(piece) > default_w for piece in default):  # one long word (a path): it opens the help
                default, help = ["default →"], f"= {p.default!r}; {p.help}"
            cells = [[" " * indent + p.name], [p.kind.__name__], default, _wrap(p.describe_range(), range_w),
                     _wrap(help, help_w)]
            widths = (name_w, kind_w, default_w, range_w, help_w)
            for row in range(max(len(c) for c in cells)):
                parts = [(c[row] if row < len(c) else "").ljust(w) for c, w in zip(cells, widths)]
                lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_registry(registry: Registry, width: int | None = None) -> str:
    """Human-readable listing of one registry: name, summary and each parameter."""
    return format_params(registry.plural, [(name, registry[name].help, registry[name].params) for name in registry],
                         width)


def _list_groups() -> list[tuple]:
    """(names that select the group, its listing) of every group ``dmltune list`` knows."""
    groups = [((r.plural, r.kind), r) for r in _registries()]
    groups += [(names, (title, component)) for names, title, component in _sections()]
    return groups
