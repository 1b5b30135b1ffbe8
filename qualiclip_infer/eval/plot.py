"""The scatter plot of an evaluation: each model's scores against the MOS, with the fitted curves."""

from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from ..extras import MissingExtraError, require  # noqa: F401 (MissingExtraError: this module's API since 0.1)

_FORM_TITLES = {"logistic4": "4-parameter logistic", "vqeg5": "5-parameter VQEG logistic"}


def require_matplotlib() -> None:
    """Checks that matplotlib can be imported.

    Raises:
        MissingExtraError: It cannot; the message names the extra to install.
    """
    require("matplotlib.figure", "eval", "Plots")


class ScatterPanel(NamedTuple):
    """One model's panel of the scatter plot.

    Attributes:
        label: The model's name in the title.
        scores: Its score per image, in the order of the MOS values.
        metrics: Metric name -> value (``None`` where undefined): ``srcc``, ``krcc``, ``plcc`` and, per fitted form
            ``F``, ``plcc_F`` and ``rmse_F``.
        fits: Form name -> fitted curve (an object with ``params`` and ``predict(x)``).
    """

    label: str
    scores: np.ndarray
    metrics: Mapping[str, Optional[float]]
    fits: Mapping[str, Any]


def scatter_plot(path: Union[str, os.PathLike], mos: np.ndarray, panels: Sequence[ScatterPanel], *,
                 lower_better: bool = False) -> None:
    """Writes a PNG with one panel per model: score against MOS, the fitted curves, the metrics in the legend.

    Drawn on a bare :class:`~matplotlib.figure.Figure` (Agg canvas, no pyplot): no display needed, no global
    state. Needs matplotlib >= 3.1.

    Args:
        path: The PNG to write.
        mos: The opinion scores, one per image.
        panels: One per model.
        lower_better: The MOS are DMOS-style (the axis says so).

    Raises:
        MissingExtraError: matplotlib is not installed.
        OSError: The file cannot be written.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(panels), 4.8), dpi=110)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        x, values = panel.scores, panel.metrics
        ax.scatter(x, mos, s=14, alpha=0.6, edgecolors="none", color="tab:blue",
                   label=f"{len(mos)} images: SRCC {_number(values['srcc'])}, KRCC {_number(values['krcc'])}, "
                         f"PLCC {_number(values['plcc'])}")
        grid = np.linspace(float(x.min()), float(x.max()), 256)
        for (form, fit), color in zip(panel.fits.items(), ("tab:red", "tab:green")):
            if all(np.isfinite(fit.params)):
                ax.plot(grid, fit.predict(grid), color=color, linewidth=2,
                        label=f"{_FORM_TITLES[form]}: PLCC {_number(values[f'plcc_{form}'])}, "
                              f"RMSE {_number(values[f'rmse_{form}'])}")
        ax.set_xlabel("predicted quality score")
        ax.set_ylabel("DMOS (lower is better)" if lower_better else "MOS")
        label = panel.label
        ax.set_title(label if len(label) <= 60 else "..." + label[-57:], fontsize=10)
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
