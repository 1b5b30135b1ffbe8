"""The scatter plot of an evaluation: each model's scores against the MOS, with the fitted curves."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from .evaluate import Evaluation

EXTRA_HINT = 'pip install "qualiclip-infer[eval]"'
_FORM_TITLES = {"logistic4": "4-parameter logistic", "vqeg5": "5-parameter VQEG logistic"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require_matplotlib() -> None:
    """Checks that matplotlib can be imported.

    Raises:
        MissingExtraError: It cannot; the message names the extra to install.
    """
    try:
        import matplotlib.figure  # noqa: F401 (only whether it imports)
    except ImportError as error:
        raise MissingExtraError(f"plots need matplotlib, which is not installed: {EXTRA_HINT}") from error


def scatter_plot(evaluation: Evaluation, path: Union[str, os.PathLike]) -> None:
    """Writes a PNG with one panel per model: score against MOS, the fitted curves, the metrics in the legend.

    Drawn on a bare :class:`~matplotlib.figure.Figure` (Agg canvas, no pyplot): no display needed, no global
    state. Needs matplotlib >= 3.1.

    Raises:
        MissingExtraError: matplotlib is not installed.
        OSError: The file cannot be written.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    report = evaluation.report
    models = report["models"]
    figure = Figure(figsize=(5.5 * len(models), 4.8), dpi=110)
    axes = figure.subplots(1, len(models), squeeze=False)[0]
    y = evaluation.mos
    for ax, model in zip(axes, models):
        label = model["label"]
        x = evaluation.scores[label]
        values = {name: metric["value"] for name, metric in model["metrics"].items()}
        ax.scatter(x, y, s=14, alpha=0.6, edgecolors="none", color="tab:blue",
                   label=f"{report['n']} images: SRCC {_number(values['srcc'])}, KRCC {_number(values['krcc'])}, "
                         f"PLCC {_number(values['plcc'])}")
        grid = np.linspace(float(x.min()), float(x.max()), 256)
        for (form, fit), color in zip(evaluation.fits[label].items(), ("tab:red", "tab:green")):
            if all(np.isfinite(fit.params)):
                ax.plot(grid, fit.predict(grid), color=color, linewidth=2,
                        label=f"{_FORM_TITLES[form]}: PLCC {_number(values[f'plcc_{form}'])}, "
                              f"RMSE {_number(values[f'rmse_{form}'])}")
        ax.set_xlabel("predicted quality score")
        ax.set_ylabel("DMOS (lower is better)" if evaluation.lower_better else "MOS")
        ax.set_title(label if len(label) <= 60 else "..." + label[-57:], fontsize=10)
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
