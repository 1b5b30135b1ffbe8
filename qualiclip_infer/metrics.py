"""How well predicted quality scores agree with human opinion scores: SRCC, KRCC, PLCC and RMSE, the logistic
mappings fitted before PLCC/RMSE, and bootstrap confidence intervals.

numpy only, so the trainer can use it without scipy. Every statistic accepts either two 1-D arrays or two 2-D arrays
whose rows are independent samples (e.g. bootstrap resamples), and works along the last axis: a thousand resamples
cost a few vectorised passes instead of a thousand Python-level calls.

Conventions: SRCC is Pearson's correlation of average ranks (ties share the mean of their positions) and KRCC is
Kendall's tau-b (ties excluded from the pair counts as in scipy's default), so both match ``scipy.stats``. A
statistic that is undefined (fewer than two values, a constant series) is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

ArrayLike = Union[Sequence[float], np.ndarray]

# Bootstrap resamples are processed this many values at a time (resamples x images), to bound memory on datasets of
# tens of thousands of images. A function of the image count only, so results depend on the seed alone.
_BOOTSTRAP_CHUNK_VALUES = 1 << 21


# ---------------------------------------------------------------------------------------------------------------
# Correlations and errors


def _as_pair(x: ArrayLike, y: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim not in (1, 2):
        raise ValueError(f"expected two 1-D or 2-D arrays of the same shape, got {x.shape} and {y.shape}")
    return x, y


def _result(values: np.ndarray, one_dimensional: bool) -> Union[float, np.ndarray]:
    return float(values[0]) if one_dimensional else values


def plcc(x: ArrayLike, y: ArrayLike) -> Union[float, np.ndarray]:
    """Pearson's linear correlation coefficient (no fitted mapping).

    Args:
        x: Scores, 1-D, or 2-D with one sample per row.
        y: Opinion scores, the same shape.

    Returns:
        A float for 1-D input, an array with one value per row for 2-D input; NaN where a series is constant.
    """
    x, y = _as_pair(x, y)
    flat = x.ndim == 1
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (x * y).sum(axis=-1) / denominator
    # Rounding can push a perfect correlation a hair past 1.
    return _result(np.where(denominator > 0, np.clip(value, -1.0, 1.0), np.nan), flat)


def rankdata(a: ArrayLike) -> np.ndarray:
    """Ranks along the last axis, from 1; tied values get the average of the ranks they span (as scipy's default).

    Args:
        a: 1-D or 2-D array of finite values.

    Returns:
        float64 ranks of the same shape.
    """
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[-1]
    order = np.argsort(a, axis=-1, kind="stable")
    ordered = np.take_along_axis(a, order, axis=-1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    position = np.broadcast_to(np.arange(n), ordered.shape)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, position, n), axis=-1), axis=-1), axis=-1)
    ranks = np.empty_like(ordered)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def srcc(x: ArrayLike, y: ArrayLike) -> Union[float, np.ndarray]:
    """Spearman's rank correlation coefficient: PLCC of the average ranks (equal to ``scipy.stats.spearmanr``).

    Args and returns as :func:`plcc`.
    """
    x, y = _as_pair(x, y)
    return plcc(rankdata(x), rankdata(y))


def _dense_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0, 1, 2, ... along the last axis of a 2-D array, equal values sharing a rank."""
    order = np.argsort(a, axis=-1, kind="stable")
    ordered = np.take_along_axis(a, order, axis=-1)
    steps = np.zeros(ordered.shape, dtype=np.int64)
    steps[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ranks = np.empty_like(steps)
    np.put_along_axis(ranks, order, np.cumsum(steps, axis=-1), axis=-1)
    return ranks


def _tied_pairs(ordered: np.ndarray) -> np.ndarray:
    """Pairs of equal values per row of a row-wise sorted 2-D array: the sum of t(t-1)/2 over runs of length t."""
    n = ordered.shape[-1]
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    position = np.broadcast_to(np.arange(n), ordered.shape)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    # Each element pairs with the earlier members of its run.
    return (position - first).sum(axis=-1)


def _inversions(values: np.ndarray) -> np.ndarray:
    """Pairs i < j with ``values[i] > values[j]`` per row of a 2-D array of integers in ``[0, n)``, in O(n log^2 n).

    A bottom-up merge sort run on all rows at once: at each level, every right half-block counts the elements of
    its left half-block that exceed it (one ``searchsorted`` over all blocks, whose keys are made globally sorted by
    prefixing the block number), then each block is sorted.
    """
    rows, n = values.shape
    count = np.zeros(rows, dtype=np.int64)
    row_id = np.arange(rows, dtype=np.int64)[:, None]
    position = np.arange(n, dtype=np.int64)
    values = values.astype(np.int64, copy=True)
    half = 1
    while half < n:
        blocks_per_row = -(-n // (2 * half))
        block = row_id * blocks_per_row + position // (2 * half)
        key = block * n + values
        left = (position % (2 * half)) < half
        left_keys = key[:, left].ravel()
        right_keys, right_block = key[:, ~left], block[:, ~left]
        greater = (np.searchsorted(left_keys, (right_block + 1) * n, side="left")
                   - np.searchsorted(left_keys, right_keys, side="right"))
        count += greater.sum(axis=-1)
        values = np.sort(key, axis=-1, kind="stable") - block * n
        half *= 2
    return count


def krcc(x: ArrayLike, y: ArrayLike) -> Union[float, np.ndarray]:
    """Kendall's rank correlation coefficient, tau-b (equal to ``scipy.stats.kendalltau``), in O(n log^2 n).

    Knight's method: sort by x then y; discordant pairs are then the inversions of the y sequence, and ties come from
    run lengths. tau-b = (concordant - discordant) / sqrt((pairs - x ties) (pairs - y ties)).

    Args and returns as :func:`plcc`.
    """
    x, y = _as_pair(x, y)
    flat = x.ndim == 1
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    n = x.shape[-1]
    x_rank, y_rank = _dense_ranks(x), _dense_ranks(y)
    joint = np.sort(x_rank * n + y_rank, axis=-1)
    pairs = n * (n - 1) // 2
    x_ties = _tied_pairs(joint // n)
    y_ties = _tied_pairs(np.sort(y_rank, axis=-1))
    both_ties = _tied_pairs(joint)
    discordant = _inversions(joint % n)
    difference = pairs - x_ties - y_ties + both_ties - 2 * discordant
    denominator = np.sqrt((pairs - x_ties).astype(np.float64) * (pairs - y_ties))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(denominator > 0, difference / denominator, np.nan)
    return _result(np.clip(value, -1.0, 1.0), flat)


def rmse(prediction: ArrayLike, target: ArrayLike) -> Union[float, np.ndarray]:
    """Root mean squared error, in the target's units. Args and returns as :func:`plcc`."""
    prediction, target = _as_pair(prediction, target)
    flat = prediction.ndim == 1
    error = np.atleast_2d(prediction) - np.atleast_2d(target)
    return _result(np.sqrt((error * error).mean(axis=-1)) if error.shape[-1] else np.full(len(error), np.nan), flat)


# ---------------------------------------------------------------------------------------------------------------
# Logistic mappings


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for large |z|, unlike 1 / (1 + exp(-z)).
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logistic4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2``: from ``b2`` (low x) to ``b1``."""
    return (b1 - b2) * _sigmoid((np.asarray(x, dtype=np.float64) - b3) / b4) + b2


def vqeg5(x: ArrayLike, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """The 5-parameter VQEG logistic ``b1 (0.5 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5``."""
    x = np.asarray(x, dtype=np.float64)
    return b1 * (_sigmoid(b2 * (x - b3)) - 0.5) + b4 * x + b5


@dataclass(frozen=True)
class _Form:
    """A logistic mapping seen as a few linear coefficients on a basis that depends on two nonlinear parameters.

    Both forms are ``sum_j beta_j phi_j(x)`` with ``phi = [s - 1/2, 1]`` (logistic4) or ``[s - 1/2, x, 1]`` (vqeg5)
    and ``s = sigmoid(k (x - c))``: given the slope ``k`` and centre ``c``, the best ``beta`` is a linear least-squares
    solution.
    """

    function: Callable[..., np.ndarray]
    formula: str
    with_line: bool

    @property
    def parameters(self) -> int:
        return 5 if self.with_line else 4

    def basis(self, x: np.ndarray, theta: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The basis ``(R, n, L)`` for each row's ``theta = (k, c)``, and the derivatives of its first column by ``k``
        and ``c``."""
        k, c = theta[:, 0:1], theta[:, 1:2]
        t = np.tanh(0.5 * k * (x - c))
        slope = 0.25 * (1.0 - t * t)  # s (1 - s), exact where s - 1/2 is tiny
        columns = [0.5 * t, x, np.ones_like(x)] if self.with_line else [0.5 * t, np.ones_like(x)]
        return np.stack(columns, axis=-1), slope * (x - c), -k * slope

    def to_original(self, theta: np.ndarray, beta: np.ndarray, scaling: "_Scaling") -> np.ndarray:
        """``b1 ... bk`` in the original units from ``(k, c)`` and ``beta`` fitted on standardised values."""
        mx, sx, my, sy = scaling.x_mean, scaling.x_std, scaling.y_mean, scaling.y_std
        k, c = theta[:, 0], theta[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            if not self.with_line:  # y = my + sy (a (s - 1/2) + m)
                a, m = beta[:, 0], beta[:, 1]
                return np.stack([my + sy * (m + a / 2), my + sy * (m - a / 2), mx + sx * c, sx / k], axis=-1)
            a, d, e = beta[:, 0], beta[:, 1], beta[:, 2]  # y = my + sy (a (s - 1/2) + d xs + e)
            line = sy * d / sx
            return np.stack([sy * a, k / sx, mx + sx * c, line, my + sy * e - line * mx], axis=-1)


# The mappings fitted from score to MOS before PLCC and RMSE; the names are those used in reports.
FORMS = {
    "logistic4": _Form(logistic4, "(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2", with_line=False),
    "vqeg5": _Form(vqeg5, "b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5", with_line=True),
}


def _linear_fit(basis: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Least-squares coefficients ``(R, L)`` per row, and the (slightly ridged) normal matrices ``(R, L, L)``."""
    gram = basis.transpose(0, 2, 1) @ basis
    # A whisker of ridge keeps the solve defined where s - 1/2 becomes collinear with x or 1 (k -> 0).
    gram = gram + 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(gram.shape[-1]) + 1e-300
    return np.linalg.solve(gram, basis.transpose(0, 2, 1) @ y[..., None])[..., 0], gram


def _fit_rows(form: _Form, x: np.ndarray, y: np.ndarray, theta: np.ndarray, *, max_iterations: int = 500,
              tolerance: float = 1e-12) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of ``form`` to each row of ``x``/``y`` (2-D, standardised), all rows at once.

    Variable projection: the linear coefficients are solved exactly for every ``(k, c)``, and Levenberg-Marquardt
    moves only ``(k, c)``, with Kaufman's Jacobian of the projected residual. Fitting all four or five parameters
    directly crawls along a long valley (amplitude and width growing together) whenever the relation is nearly
    linear or exponential over the data, often for hundreds of steps; the projection removes that valley.

    Why not scipy.optimize.curve_fit: it would make scipy a run-time dependency of every evaluation (and of the
    trainer), and it fits one curve per call, while the bootstrap refits a thousand resamples; here each step
    updates every row with batched 2x2 and 3x3 solves.

    Returns:
        ``theta`` ``(R, 2)``, ``beta`` ``(R, L)``, and per row whether it converged: a kept step lowered the squared
        error by less than ``tolerance`` (relative), or no step lowers it any more, within ``max_iterations``.
    """
    rows = len(x)
    theta = theta.astype(np.float64, copy=True)

    def evaluate(index: np.ndarray, trial: np.ndarray):
        basis, d_k, d_c = form.basis(x[index], trial)
        beta, gram = _linear_fit(basis, y[index])
        residual = y[index] - (basis @ beta[..., None])[..., 0]
        return (residual * residual).sum(axis=-1), residual, basis, gram, beta, d_k, d_c

    everything = np.arange(rows)
    cost, residual, basis, gram, beta, d_k, d_c = evaluate(everything, theta)
    damping = np.full(rows, 1e-3)
    converged = np.zeros(rows, dtype=bool)
    done = ~np.isfinite(cost)
    for _ in range(max_iterations):
        index = np.flatnonzero(~done)
        if index.size == 0:
            break
        # Kaufman: d(residual)/d(theta_j) ~ -(I - projection) (d basis / d theta_j) beta; only column 0 moves.
        moved = beta[index, :1, None] * np.stack([d_k[index], d_c[index]], axis=1)  # (R, 2, n)
        b = basis[index]
        coefficients = np.linalg.solve(gram[index], b.transpose(0, 2, 1) @ moved.transpose(0, 2, 1))
        jacobian = -(moved.transpose(0, 2, 1) - b @ coefficients)  # (R, n, 2)
        jt_j = jacobian.transpose(0, 2, 1) @ jacobian
        gradient = -(jacobian.transpose(0, 2, 1) @ residual[index][..., None])[..., 0]
        diagonal = np.diagonal(jt_j, axis1=1, axis2=2) + 1e-300
        system = jt_j + damping[index, None, None] * diagonal[:, :, None] * np.eye(2)
        finite = np.isfinite(system).all(axis=(1, 2)) & np.isfinite(gradient).all(axis=-1)
        system[~finite], gradient[~finite] = np.eye(2), 0.0
        trial = theta[index] + np.linalg.solve(system, gradient[..., None])[..., 0]
        with np.errstate(invalid="ignore", over="ignore"):
            trial_cost, trial_residual, trial_basis, trial_gram, trial_beta, trial_d_k, trial_d_c = evaluate(index, trial)
            better = finite & np.isfinite(trial_cost) & (trial_cost < cost[index])
        kept = index[better]
        small = cost[kept] - trial_cost[better] <= tolerance * cost[kept]
        theta[kept], cost[kept], residual[kept] = trial[better], trial_cost[better], trial_residual[better]
        basis[kept], gram[kept], beta[kept] = trial_basis[better], trial_gram[better], trial_beta[better]
        d_k[kept], d_c[kept] = trial_d_k[better], trial_d_c[better]
        damping[kept] = np.maximum(damping[kept] / 3.0, 1e-12)
        rejected = index[~better]
        damping[rejected] *= 4.0
        # Settled: the last kept step barely helped, or steps so damped that nothing moves any more.
        settled = np.concatenate([kept[small], rejected[damping[rejected] > 1e12]])
        converged[settled] = True
        done[settled] = True
        done[index[~finite]] = True
    return theta, beta, converged & np.isfinite(cost)


def _predict_rows(form: _Form, x: np.ndarray, theta: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return (form.basis(x, theta)[0] @ beta[..., None])[..., 0]


@dataclass(frozen=True)
class LogisticFit:
    """A monotone mapping from scores to opinion scores, fitted by least squares.

    Attributes:
        form: ``logistic4`` or ``vqeg5`` (see :data:`FORMS`).
        params: ``b1 ... bk`` in the units of the scores and opinion scores; NaN if the fit was impossible.
        converged: Whether the optimiser settled (its squared error no longer decreases).
    """

    form: str
    params: Tuple[float, ...]
    converged: bool

    @property
    def formula(self) -> str:
        """The mapping, with ``x`` the score."""
        return FORMS[self.form].formula

    def predict(self, scores: ArrayLike) -> np.ndarray:
        """Opinion scores predicted from model scores."""
        return FORMS[self.form].function(scores, *self.params)


@dataclass(frozen=True)
class _Scaling:
    """Centre and spread of scores and opinion scores: fits run on standardised values, where every parameter is of
    order one whatever the MOS scale (0-1, 1-5, 0-100), and are mapped back afterwards."""

    x_mean: float
    x_std: float
    y_mean: float
    y_std: float

    def standardise(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return (x - self.x_mean) / self.x_std, (y - self.y_mean) / self.y_std


@dataclass(frozen=True)
class _Fitted:
    """A fit on standardised values: the start point of the bootstrap's refits."""

    form: _Form
    scaling: _Scaling
    theta: np.ndarray  # (1, 2)
    beta: np.ndarray  # (1, L)
    converged: bool


def _fit(form_name: str, x: np.ndarray, y: np.ndarray) -> Optional[_Fitted]:
    """The fit on standardised values; ``None`` with too few points or a constant series."""
    if form_name not in FORMS:
        raise ValueError(f"unknown logistic form {form_name!r}; expected one of {', '.join(FORMS)}")
    form = FORMS[form_name]
    scaling = _Scaling(float(x.mean()), float(x.std()), float(y.mean()), float(y.std()))
    if len(x) <= form.parameters or not scaling.x_std > 0 or not scaling.y_std > 0:
        return None
    xs, ys = scaling.standardise(x, y)
    # The usual start, as pyiqa and most papers: centre at the mean score, width a quarter of its spread (k = 4 in
    # standard units). The linear coefficients, hence the curve's direction, need no start. vqeg5 starts where the
    # fitted logistic4 ended, so it can only improve on it.
    theta = np.array([[4.0, 0.0]])
    if form.with_line:
        theta = _fit_rows(FORMS["logistic4"], xs[None], ys[None], theta)[0]
    theta, beta, converged = _fit_rows(form, xs[None], ys[None], theta)
    return _Fitted(form, scaling, theta, beta, bool(converged[0]))


def fit_logistic(scores: ArrayLike, mos: ArrayLike, form: str = "logistic4") -> LogisticFit:
    """Fits a logistic mapping from scores to opinion scores by least squares.

    Args:
        scores: Model scores, 1-D.
        mos: Opinion scores as given (rising or falling with quality: the fitted curve follows either).
        form: ``logistic4`` or ``vqeg5``.

    Returns:
        The fit; its parameters are NaN when there are no more points than parameters, or either series is constant.
        Where the data are best fitted by the curve's far tail or its linear middle, the optimum lies at infinite
        parameters: the fit stops once its squared error has settled, so the parameters are large but the predicted
        values (and PLCC, RMSE) are right.
    """
    x, y = _as_pair(scores, mos)
    if x.ndim != 1:
        raise ValueError("fit_logistic takes 1-D scores and opinion scores")
    return _public_fit(form, _fit(form, x, y))


def _public_fit(form: str, fitted: Optional[_Fitted]) -> LogisticFit:
    if fitted is None:
        return LogisticFit(form, (float("nan"),) * FORMS[form].parameters, False)
    params = fitted.form.to_original(fitted.theta, fitted.beta, fitted.scaling)[0]
    return LogisticFit(form, tuple(float(v) for v in params), fitted.converged)


# ---------------------------------------------------------------------------------------------------------------
# All metrics, and their bootstrap


RAW_METRICS = ("srcc", "krcc", "plcc", "rmse")


def metric_names(fits: Sequence[str] = ("logistic4",)) -> List[str]:
    """Names of the metrics :func:`agreement` reports, in order: raw ones, then PLCC and RMSE after each fit."""
    return [*RAW_METRICS, *(f"{kind}_{form}" for form in fits for kind in ("plcc", "rmse"))]


def agreement(scores: ArrayLike, mos: ArrayLike, fits: Sequence[str] = ("logistic4",), *,
              lower_better: bool = False) -> Tuple[Dict[str, float], Dict[str, LogisticFit]]:
    """Every agreement metric of one set of scores with opinion scores.

    Sign convention: the raw correlations (SRCC, KRCC, PLCC) are positive when the model agrees with people; with
    ``lower_better`` they are those of the scores with the negated MOS. The logistic mappings are fitted to the MOS as
    given (falling for DMOS), so their PLCC is positive for any good fit and their parameters predict the file's
    values; RMSE is in the file's units.

    Args:
        scores: Model scores, 1-D (higher = better quality).
        mos: Opinion scores as given.
        fits: Logistic forms to fit before PLCC and RMSE (``logistic4``, ``vqeg5``).
        lower_better: The opinion scores are DMOS-style (lower = better quality).

    Returns:
        ``{metric: value}`` (see :func:`metric_names`; ``rmse`` is the raw score against the MOS, meaningful only for
        a MOS on the score's 0-1 scale, higher better) and ``{form: fit}``.
    """
    x, y = _as_pair(scores, mos)
    if x.ndim != 1:
        raise ValueError("agreement takes 1-D scores and opinion scores")
    fitted = {form: _fit(form, x, y) for form in fits}
    values = {name: float(value[0])
              for name, value in _all_metrics(x[None], y[None], fitted, False, lower_better).items()}
    return values, {form: _public_fit(form, fit) for form, fit in fitted.items()}


def bootstrap_indices(n: int, resamples: int, seed: int) -> List[np.ndarray]:
    """Resampling with replacement, in chunks of rows: ``resamples`` rows of ``n`` indices in all.

    The chunk size depends on ``n`` only, so the draws depend on ``seed`` alone, never on the machine.
    """
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_VALUES // max(n, 1))
    chunks = []
    for start in range(0, resamples, rows_per_chunk):
        chunks.append(rng.integers(0, n, size=(min(rows_per_chunk, resamples - start), n)))
    return chunks


def _fitted_predictions(fitted: Optional[_Fitted], x: np.ndarray, y: np.ndarray, refit: bool) -> np.ndarray:
    """Predicted opinion scores for each row of ``x`` (2-D): from the fit itself, or (``refit``) from a refit of each
    row started at it. NaN rows where the fit is impossible."""
    if fitted is None:
        return np.full(x.shape, np.nan)
    xs, ys = fitted.scaling.standardise(x, y)
    theta, beta = fitted.theta, fitted.beta
    if refit:
        theta, beta, _ = _fit_rows(fitted.form, xs, ys, np.repeat(theta, len(x), axis=0))
    return fitted.scaling.y_mean + fitted.scaling.y_std * _predict_rows(fitted.form, xs, theta, beta)


def _all_metrics(x: np.ndarray, y: np.ndarray, fitted: Dict[str, Optional[_Fitted]], refit: bool,
                 lower_better: bool) -> Dict[str, np.ndarray]:
    """Every metric for each row of ``x``/``y`` (2-D)."""
    sign = -1.0 if lower_better else 1.0
    values = {"srcc": sign * srcc(x, y), "krcc": sign * krcc(x, y), "plcc": sign * plcc(x, y), "rmse": rmse(x, y)}
    for form, fit in fitted.items():
        predicted = _fitted_predictions(fit, x, y, refit)
        values[f"plcc_{form}"], values[f"rmse_{form}"] = plcc(predicted, y), rmse(predicted, y)
    return values


def bootstrap(score_sets: Sequence[ArrayLike], mos: ArrayLike, *, fits: Sequence[str] = ("logistic4",),
              lower_better: bool = False, resamples: int = 1000, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """Bootstrap distributions of every metric, for several models scored on the same images.

    Every model is evaluated on the same resamples, so differences between models are paired. The logistic
    mappings are refitted on every resample (starting from the full-data fit), so the intervals of the fitted PLCC and
    RMSE include the uncertainty of the fit.

    Args:
        score_sets: One 1-D score array per model, all aligned with ``mos``.
        mos: Opinion scores, as given.
        fits: Logistic forms to fit.
        lower_better: As for :func:`agreement`.
        resamples: Number of resamples.
        seed: Seed of the resampling.

    Returns:
        Per model, ``{metric: (resamples,) array}`` (see :func:`metric_names`); a resample where a metric is
        undefined holds NaN.
    """
    y = np.asarray(mos, dtype=np.float64)
    xs = [np.asarray(scores, dtype=np.float64) for scores in score_sets]
    starts = [{form: _fit(form, x, y) for form in fits} for x in xs]
    samples: List[Dict[str, List[np.ndarray]]] = [{name: [] for name in metric_names(fits)} for _ in xs]
    for indices in bootstrap_indices(len(y), resamples, seed):
        y_rows = y[indices]
        for model, x in enumerate(xs):
            for name, values in _all_metrics(x[indices], y_rows, starts[model], True, lower_better).items():
                samples[model][name].append(values)
    return [{name: np.concatenate(parts) if parts else np.empty(0) for name, parts in model.items()}
            for model in samples]


def percentile_interval(samples: ArrayLike, confidence: float = 0.95) -> Tuple[float, float]:
    """The central ``confidence`` interval of bootstrap samples (percentile method), ignoring NaN samples.

    Returns:
        ``(low, high)``; NaN when there is no finite sample.
    """
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_difference(first: ArrayLike, second: ArrayLike, observed: float,
                      confidence: float = 0.95) -> Dict[str, Union[float, List[float]]]:
    """Summary of a paired bootstrap of a difference between two models (``second - first``, same resamples).

    Args:
        first: Bootstrap samples of the metric for the reference model.
        second: Bootstrap samples for the other model, from the same resamples.
        observed: The difference on the full data.
        confidence: Interval coverage.

    Returns:
        ``difference`` (observed), ``ci`` (percentile interval) and ``p_value``: twice the smaller share of
        resampled differences on either side of zero (two-sided; at most 1).
    """
    delta = np.asarray(second, dtype=np.float64) - np.asarray(first, dtype=np.float64)
    delta = delta[np.isfinite(delta)]
    low, high = percentile_interval(delta, confidence)
    p_value = float(min(1.0, 2.0 * min(np.mean(delta <= 0), np.mean(delta >= 0)))) if delta.size else float("nan")
    return {"difference": float(observed), "ci": [low, high], "p_value": p_value}
