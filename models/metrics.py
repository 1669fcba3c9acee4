"""RouteLLM's evaluation metrics (Ong et al., arXiv 2406.18665, §5), reimplemented over plain arrays.

Every function takes per-item quality arrays `strong` and `weak` (correctness 0/1, or a judge score) and
`p_strong` from a router. A routing curve is a set of points (strong_share, quality): the share of items sent
to the strong model (in [0, 1]) and the mean quality of the answers actually served.

The paper's protocol (`routellm/evals/benchmarks.py`, `evaluate.py`), as reproduced here:
- thresholds are the 11 edges of `pd.qcut(p_strong, 10)`; edge i sends an item to the strong model when
  `p_strong >= t_i`, except the last edge, which uses `>` (so the curve always has a 0% and a 100% point);
- AUC is the trapezoid over strong share; APGR = (AUC - AUC_weak) / (AUC_strong - AUC_weak), the two reference
  areas being the constant weak/strong lines over the same x range (= ∫ PGR dc over [0, 1]);
- CPT(x) is the strong share where the curve first recovers x of the strong-weak gap;
- the random baseline is averaged over 10 runs of p_strong ~ U(0, 1).

Differences from RouteLLM, all deliberate:
- Duplicate qcut edges (many equal scores) make `pd.qcut` raise in RouteLLM. Here all 11 edges are kept;
  equal edges select identical items and so give identical points, which are merged. Between two distinct
  points the trapezoid is a straight line, which is exactly the expected quality of breaking the tie at random.
- CPT is the first crossing of the piecewise-linear curve. RouteLLM's `np.interp(target, quality, share)` gives
  the same number when quality rises with share (its stated assumption) and an undefined one otherwise.
- The oracle gives the strong model to exactly c·N items, those with the largest (strong - weak) gain first, so
  its curve ends at the all-strong quality like every router's. RouteLLM's `get_optimal_accuracy` lets spare
  strong calls cost nothing (gains clipped at 0); `oracle_curve(..., at_most=True)` reproduces that variant
  (APGR 1.29 / 1.13 / 0.96 on MMLU / GSM8K / MT-Bench instead of 1.27 / 1.12 / 0.95). Its MT-Bench version also
  ranks gaps over all 80 questions, floors c·N and selects one question too many (label slicing); none of that
  is copied here.

Uncertainty (not in the paper, which reports single APGRs; DESIGN.md §3): `bootstrap_curves` resamples the
prompts with replacement and recomputes the paper-protocol curve and APGR of every router, and of the random
reference, on each resample, the same resamples for all of them so that comparisons are paired. Each resample is
a row of multiplicities (how often each prompt was drawn), so a router's scores are sorted once and every
resample is a weighted cumulative sum over that order; qcut edges are the weighted order statistics that
`np.quantile` would read on the explicitly repeated sample, so a resample gives what `summarize` gives on it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from index.errors import InputError

QCUT_BINS = 10
RANDOM_ITERS = 10
DENSE_POINTS = 101
# RouteLLM's optimal curve is sampled at strong shares 0%, 10%, ..., 100% (`range(0, 101, 10)`).
ORACLE_GRID = np.linspace(0.0, 1.0, QCUT_BINS + 1)

Curve = tuple[np.ndarray, np.ndarray]


def _arrays(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """float64 copies of equal-length, non-empty, finite 1-d arrays."""
    out = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    if len(out[0]) == 0 or any(a.ndim != 1 or len(a) != len(out[0]) for a in out):
        raise InputError(f"expected non-empty 1-d arrays of equal length, got shapes {[a.shape for a in out]}")
    if not all(np.isfinite(a).all() for a in out):
        raise InputError("quality and p_strong arrays must be finite")
    return out


def qcut_thresholds(p_strong: np.ndarray, n_bins: int = QCUT_BINS) -> np.ndarray:
    """The n_bins + 1 edges of `pd.qcut(p_strong, n_bins, retbins=True)`, duplicates kept (see module doc)."""
    p_strong = np.asarray(p_strong, dtype=np.float64)
    try:
        return np.asarray(pd.qcut(p_strong, n_bins, retbins=True)[1], dtype=np.float64)
    except ValueError:
        # pandas refuses duplicate edges; the raw quantiles are the edges it would have returned (linear
        # interpolation, as pandas uses), and the duplicates collapse to one point in curve_points.
        return np.quantile(p_strong, np.linspace(0.0, 1.0, n_bins + 1))


def curve_points(p_strong: np.ndarray, strong: np.ndarray, weak: np.ndarray, thresholds: np.ndarray) -> Curve:
    """Strong share and mean served quality at each threshold (`>=`, the last one `>`), sorted by share.

    Thresholds that select the same items give one point. Cost is O((N + T) log N), so a threshold at every
    distinct score is affordable on MMLU's 14k items.
    """
    strong, weak, p_strong = _arrays(strong, weak, p_strong)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or len(thresholds) == 0:
        raise InputError("thresholds must be a non-empty 1-d array")
    n = len(p_strong)
    order = np.argsort(p_strong, kind="stable")
    sorted_p = p_strong[order]
    # gain_from[k] = total (strong - weak) over the items ranked k.. (the ones at or above a threshold).
    gain = (strong - weak)[order]
    gain_from = np.concatenate([np.cumsum(gain[::-1])[::-1], [0.0]])
    first = np.searchsorted(sorted_p, thresholds, side="left")
    first[-1] = np.searchsorted(sorted_p, thresholds[-1], side="right")
    share, index = np.unique((n - first) / n, return_index=True)
    quality = (weak.sum() + gain_from[first[index]]) / n
    return share, quality


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area under y(x); x sorted ascending (np.trapz, which numpy 2 renamed, written out)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _gap(strong_mean: float, weak_mean: float) -> float:
    gap = float(strong_mean) - float(weak_mean)
    if gap == 0.0:
        raise InputError("strong and weak quality are equal: PGR is undefined")
    return gap


def pgr(quality: np.ndarray | float, strong_mean: float, weak_mean: float) -> np.ndarray | float:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong model's (may leave [0, 1])."""
    return (np.asarray(quality, dtype=np.float64) - weak_mean) / _gap(strong_mean, weak_mean)


def apgr(strong_share: np.ndarray, quality: np.ndarray, strong_mean: float, weak_mean: float) -> float:
    """(AUC - AUC_weak) / (AUC_strong - AUC_weak), the reference areas taken over the curve's own x range."""
    strong_share = np.asarray(strong_share, dtype=np.float64)
    width = float(strong_share[-1] - strong_share[0])
    if width <= 0.0:
        raise InputError("a curve needs at least two distinct strong shares")
    return float((auc(strong_share, quality) - weak_mean * width) / (_gap(strong_mean, weak_mean) * width))


def cpt(x: float, strong_share: np.ndarray, quality: np.ndarray, strong_mean: float, weak_mean: float) -> float:
    """Call-performance threshold: the smallest strong share whose quality recovers x of the gap (nan if never)."""
    strong_share, quality = np.asarray(strong_share, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    target = weak_mean + x * _gap(strong_mean, weak_mean)
    reached = np.flatnonzero(quality >= target)
    if len(reached) == 0:
        return float("nan")
    i = reached[0]
    if i == 0:
        return float(strong_share[0])
    x0, x1, y0, y1 = strong_share[i - 1], strong_share[i], quality[i - 1], quality[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def qcut_curve(p_strong: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> Curve:
    """The paper's 11-threshold curve for one router."""
    return curve_points(p_strong, strong, weak, qcut_thresholds(p_strong))


def dense_sweep(p_strong: np.ndarray, strong: np.ndarray, weak: np.ndarray, n: int | None = DENSE_POINTS) -> Curve:
    """A finer curve: thresholds at n evenly spaced quantiles of p_strong, or (n=None) at every distinct score.

    With n=None the curve is exact: one point per distinct score plus the 0% point, no grid at all.
    """
    p_strong = np.asarray(p_strong, dtype=np.float64)
    if n is None:
        # The trailing +inf edge (last edge uses `>`) adds the 0% point; the max score then keeps its `>=` point.
        thresholds = np.append(np.unique(p_strong), np.inf)
    else:
        thresholds = np.quantile(p_strong, np.linspace(0.0, 1.0, n))
    return curve_points(p_strong, strong, weak, thresholds)


def random_curve(strong: np.ndarray, weak: np.ndarray, iters: int = RANDOM_ITERS, seed: int = 0) -> Curve:
    """RouteLLM's random baseline: `iters` runs of p_strong ~ U(0, 1), qcut thresholds per run, points averaged.

    RouteLLM averages points that share a strong percentage (`groupby("strong_percentage").mean()`). With
    distinct scores (U(0, 1) draws tie with probability ~N²/2⁵³) edge i selects a number of items that depends
    on i and N only (about N - ceil(i·(N-1)/10)), so every run yields the same shares and averaging by share is
    averaging by edge position, which is what is done here.
    """
    strong, weak = _arrays(strong, weak)
    rng = np.random.default_rng(seed)
    runs = [qcut_curve(rng.random(len(strong)), strong, weak) for _ in range(iters)]
    return runs[0][0], np.mean([quality for _, quality in runs], axis=0)


def oracle_curve(
    strong: np.ndarray, weak: np.ndarray, shares: np.ndarray | None = None, at_most: bool = False
) -> Curve:
    """The ceiling: with c·N strong calls, serve the strong model on the items where it gains most.

    Quality at share c is mean(weak) + G(c·N)/N, G being the cumulative sum of the per-item gains
    (strong - weak) sorted in decreasing order, interpolated linearly for a fractional item (RouteLLM uses
    the fractional c·N too). For correctness this is weak_correct + min(c·N, #(weak wrong ∧ strong right)) until
    the helpful items run out; for MT-Bench it is the questions with the largest strong - weak gap first.
    at_most=True clips gains at 0 (spare strong calls are free), RouteLLM's `get_optimal_accuracy`.
    Sampled at `shares`: by default RouteLLM's 0%, 10%, ..., 100% (the paper's plots and the APGR ≈ 1.27 /
    1.12 / 0.95 of MMLU / GSM8K / MT-Bench). No router point lies above the curve, and since the curve is concave,
    with shares = arange(N + 1) / N its APGR bounds every router's APGR under both protocols.
    """
    strong, weak = _arrays(strong, weak)
    shares = ORACLE_GRID if shares is None else np.asarray(shares, dtype=np.float64)
    gain = np.sort(strong - weak)[::-1]
    if at_most:
        gain = np.clip(gain, 0.0, None)
    n = len(gain)
    cumulative = np.concatenate([[0.0], np.cumsum(gain)])
    return shares, weak.mean() + np.interp(shares * n, np.arange(n + 1), cumulative) / n


def curve_summary(
    strong_share: np.ndarray, quality: np.ndarray, strong_mean: float, weak_mean: float
) -> dict[str, Any]:
    """APGR, CPT(50%), CPT(80%) and the points of one curve, JSON-ready."""
    return {
        "apgr": apgr(strong_share, quality, strong_mean, weak_mean),
        "cpt50": cpt(0.5, strong_share, quality, strong_mean, weak_mean),
        "cpt80": cpt(0.8, strong_share, quality, strong_mean, weak_mean),
        "curve": {"strong_share": np.asarray(strong_share).tolist(), "quality": np.asarray(quality).tolist()},
    }


def summarize(p_strong: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> dict[str, Any]:
    """Paper protocol (qcut) metrics plus the dense-sweep APGR and curve for one router's scores."""
    strong, weak, p_strong = _arrays(strong, weak, p_strong)
    strong_mean, weak_mean = strong.mean(), weak.mean()
    summary = curve_summary(*qcut_curve(p_strong, strong, weak), strong_mean, weak_mean)
    dense = dense_sweep(p_strong, strong, weak)
    summary["apgr_dense"] = apgr(*dense, strong_mean, weak_mean)
    summary["dense_curve"] = {"strong_share": dense[0].tolist(), "quality": dense[1].tolist()}
    return summary


# --- Prompt bootstrap -----------------------------------------------------------------------------------------

CI_LEVEL = 0.95
# Resamples are processed in chunks of about this many (resample, prompt) cells per array, which bounds memory
# (the random reference holds RANDOM_ITERS permuted copies of a chunk) without a Python loop per resample.
_CHUNK_CELLS = 1 << 22


@functools.cache
def _qcut_levels(n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(the levels `pd.qcut` asks `np.quantile` for, plain `linspace`): the first unless edges repeat.

    Recent pandas rounds the levels that are not exact in base 2 up by one ulp, which moves an edge off an
    order statistic by a hair and so changes which items `>=` selects. Which pandas does is read off a probe
    (ranks 0..n_bins, where the nudge is visible) rather than assumed from a version number.
    """
    plain = np.linspace(0.0, 1.0, n_bins + 1)
    nudged = plain.copy()
    np.putmask(nudged, n_bins * nudged != np.arange(n_bins + 1), np.nextafter(nudged, 1.0))
    probe = np.arange(n_bins + 1, dtype=np.float64)
    used = np.asarray(pd.qcut(probe, n_bins, retbins=True)[1], dtype=np.float64)
    return (nudged if np.array_equal(used, np.quantile(probe, nudged)) else plain), plain


def _linear_positions(m: int, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.quantile's 'linear' method on m values: (lower rank, upper rank, interpolation weight) per level."""
    virtual = (m - 1) * levels
    lower = np.floor(virtual)
    weight = virtual - lower
    lower = np.clip(lower.astype(np.int64), 0, m - 1)
    upper = np.minimum(lower + 1, m - 1)
    return lower, upper, weight


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's quantile interpolation, operation for operation, so that edges match it to the last bit."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _order_statistics(cumulative: np.ndarray, sorted_p: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Value at each 0-based rank of every row's explicitly repeated sample, shape (rows, len(ranks)).

    `cumulative[r, j]` is how many draws of resample r fall on the first j + 1 items of the sorted order, so the
    draw of rank k is item `searchsorted(cumulative[r], k, "right")`. Rows are offset by m + 1 (m draws per
    resample) to make one sorted array and answer every row in a single search.
    """
    rows, n = cumulative.shape
    m = int(cumulative[0, -1])
    offset = (m + 1) * np.arange(rows, dtype=np.int64)[:, None]
    found = np.searchsorted((cumulative + offset).ravel(), (ranks[None, :] + offset).ravel(), side="right")
    return sorted_p[found.reshape(rows, len(ranks)) - n * np.arange(rows)[:, None]]


def _weighted_qcut(
    sorted_p: np.ndarray, sorted_gain: np.ndarray, counts: np.ndarray, weak_sum: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """`weighted_qcut_curves` on items already sorted by p_strong (counts, gains in that order)."""
    rows = counts.shape[0]
    m = int(counts[0].sum())
    zeros = np.zeros((rows, 1))
    cumulative = np.cumsum(counts, axis=1)
    below = np.concatenate([zeros, cumulative], axis=1)  # draws on items ranked < j
    gain_below = np.concatenate([zeros, np.cumsum(counts * sorted_gain, axis=1)], axis=1)
    pandas_levels, plain_levels = _qcut_levels(n_bins)
    edges = []
    for levels in (pandas_levels, plain_levels):
        lower, upper, weight = _linear_positions(m, levels)
        values = _order_statistics(cumulative, sorted_p, np.concatenate([lower, upper]))
        edges.append(_lerp(values[:, : len(levels)], values[:, len(levels):], weight))
    # pd.qcut raises on repeated edges and qcut_thresholds then falls back to np.quantile at the plain levels.
    repeated = np.any(np.diff(edges[0], axis=1) == 0.0, axis=1)
    thresholds = np.where(repeated[:, None], edges[1], edges[0])
    first = np.empty(thresholds.shape, dtype=np.int64)
    first[:, :-1] = np.searchsorted(sorted_p, thresholds[:, :-1], side="left")
    first[:, -1] = np.searchsorted(sorted_p, thresholds[:, -1], side="right")  # the last edge uses `>`
    drawn_below = np.take_along_axis(below, first, axis=1)
    served_gain = gain_below[:, -1:] - np.take_along_axis(gain_below, first, axis=1)
    shares = (m - drawn_below) / m
    quality = (weak_sum[:, None] + served_gain) / m
    # Edges ascend, so shares descend: flip to the ascending order curve_points returns. Edges that select the
    # same draws stay as repeated points, which add zero-width trapezoids and change no area.
    return shares[:, ::-1], quality[:, ::-1]


def _counts_matrix(counts: np.ndarray, n: int) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim == 1:
        counts = counts[None, :]
    if counts.ndim != 2 or counts.shape[1] != n or counts.shape[0] == 0:
        raise InputError(f"counts must have shape (resamples, {n}), got {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        if not np.all(counts == np.round(counts)):
            raise InputError("counts must be whole numbers of draws")
        counts = counts.astype(np.int64)
    totals = counts.sum(axis=1)
    if np.any(counts < 0) or totals[0] < 1 or np.any(totals != totals[0]):
        raise InputError("counts must be non-negative with the same positive number of draws in every row")
    return counts


def weighted_qcut_curves(
    p_strong: np.ndarray, strong: np.ndarray, weak: np.ndarray, counts: np.ndarray, n_bins: int = QCUT_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's qcut curve on each resample given as multiplicities, shape (rows, n_bins + 1) each.

    Row r of `counts` says how often each item was drawn; the curve is the one `qcut_curve` computes on the
    explicitly repeated arrays (`np.repeat(x, counts[r])`), except that the n_bins + 1 points are all kept
    (those that select the same draws repeat), shares ascending. All counts 1 is the plain paper protocol.
    """
    strong, weak, p_strong = _arrays(strong, weak, p_strong)
    counts = _counts_matrix(counts, len(p_strong))
    order = np.argsort(p_strong, kind="stable")
    counts = counts[:, order]
    weak_sum = counts @ weak[order]
    return _weighted_qcut(p_strong[order], (strong - weak)[order], counts, weak_sum, n_bins)


def curves_apgr(
    strong_share: np.ndarray, quality: np.ndarray, strong_mean: np.ndarray, weak_mean: np.ndarray
) -> np.ndarray:
    """`apgr` of each row of (rows, points) curves with per-row reference means; nan where they are equal.

    A resample where the strong and weak means coincide has no gap to recover (PGR undefined); it is marked
    rather than raised so a bootstrap can skip it and count it.
    """
    strong_share, quality = np.atleast_2d(strong_share), np.atleast_2d(quality)
    strong_mean, weak_mean = np.asarray(strong_mean, dtype=np.float64), np.asarray(weak_mean, dtype=np.float64)
    area = np.sum(np.diff(strong_share, axis=1) * (quality[:, 1:] + quality[:, :-1]) / 2.0, axis=1)
    width = strong_share[:, -1] - strong_share[:, 0]
    gap = strong_mean - weak_mean
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (area - weak_mean * width) / (gap * width)
    return np.where((gap == 0.0) | (width <= 0.0), np.nan, value)


@dataclass(frozen=True, eq=False)
class BootstrapCurves:
    """Paper-protocol curves on the same prompt resamples for several routers and the random reference.

    Router arrays are indexed [router, resample, point]; `apgr` is nan on the resamples in `skipped` (strong
    mean equal to weak mean), which every summary below leaves out.
    """

    strong_share: np.ndarray  # (routers, resamples, n_bins + 1), ascending along the last axis
    quality: np.ndarray  # (routers, resamples, n_bins + 1)
    apgr: np.ndarray  # (routers, resamples)
    random_share: np.ndarray  # (points,): the random router's shares, the same on every run and resample
    random_quality: np.ndarray  # (resamples, points), averaged over the runs
    random_apgr: np.ndarray  # (resamples,)
    strong_mean: np.ndarray  # (resamples,)
    weak_mean: np.ndarray  # (resamples,)
    skipped: np.ndarray  # (resamples,) bool

    @property
    def n_skipped(self) -> int:
        return int(self.skipped.sum())


def bootstrap_curves(
    p_strongs: Sequence[np.ndarray],
    strong: np.ndarray,
    weak: np.ndarray,
    n_resamples: int,
    seed: int = 0,
    random_iters: int = RANDOM_ITERS,
) -> BootstrapCurves:
    """Prompt bootstrap of the paper's qcut protocol for several routers and the random reference.

    Each resample draws N prompts with replacement (a seeded numpy Generator); every router in `p_strongs` is
    scored on the same draws, so P(router > baseline) can be read pairwise. The random reference on a resample
    is `random_curve` on the repeated arrays: `random_iters` runs of fresh U(0, 1) scores, points averaged.
    """
    strong, weak = _arrays(strong, weak)
    n = len(strong)
    scored = [_arrays(strong, weak, p)[2] for p in p_strongs]
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise InputError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if random_iters < 1:
        raise InputError(f"random_iters must be a positive integer, got {random_iters!r}")
    gain = strong - weak
    orders = [np.argsort(p, kind="stable") for p in scored]
    sorted_ps = [p[order] for p, order in zip(scored, orders)]
    sorted_gains = [gain[order] for order in orders]
    # With distinct U(0, 1) scores, edge i of a run selects a count of items fixed by N alone (random_curve's
    # docstring), and the items it selects are the top of a uniformly random order of the draws. So a run is a
    # random permutation of the resample's gains read at those prefix lengths: the same distribution as drawing
    # the scores and cutting them at their qcut edges, without sorting a score matrix per run.
    random_share = random_curve(np.ones(n), np.zeros(n), iters=1, seed=seed)[0]
    prefix = np.rint(random_share * n).astype(np.int64)
    rng = np.random.default_rng(seed)
    n_points = QCUT_BINS + 1
    share_out = np.empty((len(scored), n_resamples, n_points))
    quality_out = np.empty((len(scored), n_resamples, n_points))
    random_quality = np.empty((n_resamples, len(prefix)))
    strong_mean, weak_mean = np.empty(n_resamples), np.empty(n_resamples)
    chunk = max(1, _CHUNK_CELLS // (n * random_iters))
    for start in range(0, n_resamples, chunk):
        rows = slice(start, min(start + chunk, n_resamples))
        k = rows.stop - rows.start
        draws = rng.integers(0, n, size=(k, n))
        counts = np.bincount((draws + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
        weak_sum = counts @ weak
        strong_mean[rows], weak_mean[rows] = (counts @ strong) / n, weak_sum / n
        for r, (order, sorted_p, sorted_gain) in enumerate(zip(orders, sorted_ps, sorted_gains)):
            share_out[r, rows], quality_out[r, rows] = _weighted_qcut(
                sorted_p, sorted_gain, counts[:, order], weak_sum, QCUT_BINS
            )
        runs = np.repeat(gain[draws], random_iters, axis=0)
        rng.permuted(runs, axis=1, out=runs)
        # Block sums between consecutive prefix lengths (strictly increasing: curve_points merged repeats),
        # then their running total: the gain served at each point, without a full cumulative sum per run.
        blocks = np.add.reduceat(runs, prefix[:-1], axis=1)
        served = np.concatenate([np.zeros((len(runs), 1)), np.cumsum(blocks, axis=1)], axis=1)
        random_quality[rows] = (weak_sum[:, None] + served.reshape(k, random_iters, -1).mean(axis=1)) / n
    skipped = strong_mean == weak_mean
    apgr_out = np.array([curves_apgr(s, q, strong_mean, weak_mean) for s, q in zip(share_out, quality_out)])
    random_apgr = curves_apgr(np.broadcast_to(random_share, random_quality.shape), random_quality,
                              strong_mean, weak_mean)
    return BootstrapCurves(share_out, quality_out, apgr_out.reshape(len(scored), n_resamples), random_share,
                           random_quality, random_apgr, strong_mean, weak_mean, skipped)


def percentile_interval(values: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """[low, high] percentile interval of bootstrap values (nan ones, skipped resamples, left out)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return [float("nan"), float("nan")]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def p_greater(a: np.ndarray, b: np.ndarray) -> float:
    """Paired bootstrap P(a > b): share of resamples where a beats b, ties counting half (nan pairs left out)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    valid = np.isfinite(a) & np.isfinite(b)
    if not valid.any():
        return float("nan")
    a, b = a[valid], b[valid]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def curve_band(
    strong_share: np.ndarray,
    quality: np.ndarray,
    at: np.ndarray,
    level: float = CI_LEVEL,
    strong_mean: np.ndarray | None = None,
    weak_mean: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of bootstrap curves: each (resample) row interpolated at the shares `at`.

    Given each row's strong and weak means, rows are first turned into PGR and the band is in PGR units: it then
    shows the uncertainty of the curve's shape, which APGR measures, rather than of where the two models' own
    qualities land on a resample (which moves the whole curve up or down and says nothing about routing).
    """
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    strong_share = np.broadcast_to(np.asarray(strong_share, dtype=np.float64), quality.shape)
    at = np.asarray(at, dtype=np.float64)
    if (strong_mean is None) != (weak_mean is None):
        raise InputError("curve_band needs both strong_mean and weak_mean, or neither")
    if strong_mean is not None:
        weak_mean = np.asarray(weak_mean, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            quality = (quality - weak_mean) / (np.asarray(strong_mean, dtype=np.float64)[:, None] - weak_mean)
        defined = np.all(np.isfinite(quality), axis=1)  # a skipped resample has no PGR
        strong_share, quality = strong_share[defined], quality[defined]
    if len(quality) == 0:
        return np.full(len(at), np.nan), np.full(len(at), np.nan)
    sampled = np.stack([np.interp(at, x, y) for x, y in zip(strong_share, quality)])
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(sampled, [tail, 100.0 - tail], axis=0)
    return low, high
