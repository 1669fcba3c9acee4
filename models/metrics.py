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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models.errors import InputError

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
