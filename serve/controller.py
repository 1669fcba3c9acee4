"""Live strong-ratio controller: hold a target share of strong calls on live traffic.

Offline calibration (`models.calibration.threshold_for_ratio`) picks the threshold that sends a share r of
*reference* prompts to the strong model. Live traffic drifts away from any reference set (a new client, a new
kind of question), and a fixed threshold then sends far more or far fewer calls to the strong model than
budgeted. The controller keeps the last `window` p_strong values sorted and sets the threshold to their
(1 − r) quantile with exactly the offline rule, so the share realised over the window follows the target; a
shift in the score distribution is absorbed after about one window.

Start-up: the window is seeded with the reference scores (evenly spaced order statistics when there are more
than fit), so the first threshold *is* the offline calibration, and live scores push the reference out FIFO.
Without reference scores the controller holds the given starting threshold until `min_live` live scores arrived.

Tenants: every live score carries its owner (the calling key), and no owner holds more than ⌊c·n⌋ of the n
places of the window (c = `max_owner_share`); an owner at its share replaces its own oldest score instead of
pushing out anyone else's. Once the window is full (it starts full when the reference scores fill it, as
`turnout prepare` writes them by default), it holds at least (1 − c)·n scores of others, so whatever one key
sends, the threshold for a strong share r stays between the others' quantiles at 1 − r/(1 − c) (the key's scores
all below) and 1 − (r − c)/(1 − c) (all above; for r ≤ c the key can fill every strong place, so keep c below the
target). While the window fills, or before `min_live` scores when no reference seeds it, one key's share of it can
be larger. The ingress decides which calls are observed at all (`serve.ingress`: only answered calls the
controller itself decided).

Pure Python + numpy: an insertion into or deletion from a sorted list of 10⁴ floats is a memmove of
microseconds, so every decision sees an exact sliding-window quantile. Each replica of the router deployment
holds its own controller over the traffic it sees; with load balancing that is a random sample of all traffic,
so every replica, and therefore the whole service, holds the target.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from index.errors import ConfigError, ScoringError


def _check_ratio(value: float, what: str = "strong_ratio") -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ConfigError(f"{what} must be in [0, 1], got {value}")
    return value


SEED = "\0reference"  # the owner of the reference scores the window starts with


class ScoreWindow:
    """The last `size` p_strong values, kept both in arrival order (with their owners) and sorted (exact sliding
    quantiles). An owner other than None holds at most `max_owner_share` of the window (None: no cap)."""

    def __init__(self, size: int, seed: Sequence[float] | np.ndarray | None = None,
                 max_owner_share: float | None = None):
        if size < 1:
            raise ConfigError(f"window size must be >= 1, got {size}")
        self.size = size
        self.max_owned = None if max_owner_share is None else max(1, math.floor(_check_ratio(
            max_owner_share, "max_key_share") * size))
        self._fifo: deque[tuple[float, str | None]] = deque()
        self._sorted: list[float] = []
        self._owned: dict[str | None, int] = {}
        if seed is not None and len(seed):
            values = np.sort(np.asarray(seed, dtype=np.float64))
            if len(values) > size:  # evenly spaced order statistics keep the reference distribution's shape
                values = values[np.round(np.linspace(0, len(values) - 1, size)).astype(int)]
            # FIFO order of the seed is shuffled so that live values displace a random slice, not the low tail.
            order = np.random.default_rng(0).permutation(len(values))
            self._fifo.extend((v, SEED) for v in values[order].tolist())
            self._sorted = values.tolist()
            self._owned[SEED] = len(values)

    def __len__(self) -> int:
        return len(self._sorted)

    @property
    def n_seed(self) -> int:
        """Reference values still in the window."""
        return self._owned.get(SEED, 0)

    def owned(self, owner: str | None) -> int:
        return self._owned.get(owner, 0)

    def add(self, value: float, owner: str | None = None) -> None:
        value = float(value)
        if not math.isfinite(value):  # one NaN in the sorted list would corrupt every later quantile
            raise ScoringError(f"p_strong {value} is not a finite number; not added to the window")
        if owner is not None and self.max_owned is not None and self.owned(owner) >= self.max_owned:
            # at its share: the owner's own oldest score goes, never anyone else's
            index = next(i for i, (_, who) in enumerate(self._fifo) if who == owner)
            self._remove(*self._fifo[index])
            del self._fifo[index]
        elif len(self._fifo) == self.size:
            self._remove(*self._fifo.popleft())
        self._fifo.append((value, owner))
        self._owned[owner] = self._owned.get(owner, 0) + 1
        bisect.insort(self._sorted, value)

    def _remove(self, value: float, owner: str | None) -> None:
        del self._sorted[bisect.bisect_left(self._sorted, value)]
        self._owned[owner] -= 1
        if not self._owned[owner]:
            del self._owned[owner]

    def threshold_for(self, strong_ratio: float) -> float:
        """Smallest-share threshold t with share(p >= t) >= strong_ratio: `threshold_for_ratio` on the window."""
        strong_ratio = _check_ratio(strong_ratio)
        n = len(self._sorted)
        if n == 0:
            raise ConfigError("cannot take a quantile of an empty window")
        n_strong = int(math.ceil(strong_ratio * n - 1e-9))
        if n_strong == 0:
            return float(np.nextafter(self._sorted[-1], np.inf))
        return self._sorted[n - n_strong]


class StrongRatioController:
    """Threshold source for one router: a fixed threshold, or a target strong ratio held over a sliding window.

    Either way it records every observed decision, so `realised_ratio` (share of strong decisions over the last
    `window` observed decisions) and `threshold_for(r)` (the threshold that would send share r of recent traffic
    to the strong model, for requests that ask for their own ratio) are always available. `max_key_share` caps
    each owner's share of the score window (`ScoreWindow`).
    """

    def __init__(self, *, strong_ratio: float | None = None, threshold: float | None = None, window: int = 2000,
                 reference: Sequence[float] | np.ndarray | None = None, initial_threshold: float | None = None,
                 min_live: int = 100, max_key_share: float | None = None):
        if (strong_ratio is None) == (threshold is None):
            raise ConfigError("give exactly one of strong_ratio (a target to hold) or threshold (a fixed value)")
        self.strong_ratio = None if strong_ratio is None else _check_ratio(strong_ratio)
        self.fixed_threshold = None if threshold is None else _check_ratio(threshold, "threshold")
        self.window = ScoreWindow(window, reference, max_key_share)
        self.min_live = min_live
        self._decisions: deque[bool] = deque(maxlen=window)
        self._n_strong = 0
        self.n_live = 0
        if self.strong_ratio is not None and not len(self.window):
            if initial_threshold is None:
                raise ConfigError("a strong_ratio target needs reference scores or an initial threshold to start from")
            self._start = float(initial_threshold)
        else:
            self._start = None
        self._threshold = self._compute()

    @property
    def mode(self) -> str:
        return "fixed" if self.fixed_threshold is not None else "controller"

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def realised_ratio(self) -> float | None:
        """Share of strong decisions over the last `window` decisions (None before the first)."""
        return self._n_strong / len(self._decisions) if self._decisions else None

    def _compute(self) -> float:
        if self.fixed_threshold is not None:
            return self.fixed_threshold
        if self._start is not None and self.n_live < self.min_live:
            return self._start
        return self.window.threshold_for(self.strong_ratio)

    def threshold_for(self, strong_ratio: float) -> float:
        """The threshold that sends `strong_ratio` of the windowed traffic to the strong model; 0 and 1 mean no
        call and every call, whatever the window holds (a score beyond the window's range would cross its
        quantile otherwise)."""
        if strong_ratio in (0.0, 1.0):
            return 0.0 if strong_ratio else float(np.nextafter(1.0, 2.0))
        if not len(self.window):
            raise ConfigError("no scores seen yet: a per-request strong_ratio needs reference scores or live traffic")
        return self.window.threshold_for(strong_ratio)

    def observe(self, p_strong: float, strong: bool, owner: str | None = None) -> None:
        """Record one routed call of `owner` (None: not capped): its score joins the window, its decision the
        realised ratio."""
        self.window.add(p_strong, owner)
        self.n_live += 1
        if len(self._decisions) == self._decisions.maxlen:
            self._n_strong -= self._decisions[0]
        self._decisions.append(bool(strong))
        self._n_strong += bool(strong)
        self._threshold = self._compute()

    def decide(self, p_strong: Sequence[float] | np.ndarray, threshold: float | None = None,
               record: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Decide a batch in arrival order: (strong mask, threshold used per call), each call recorded (`observe`)
        before the next is decided unless `record` is false (the service records a call once it was served).

        `threshold` overrides the controller for this batch (a request's own threshold).
        """
        p = np.asarray(p_strong, dtype=np.float64).ravel()
        strong = np.empty(len(p), dtype=bool)
        used = np.empty(len(p))
        for i, value in enumerate(p):
            used[i] = self._threshold if threshold is None else threshold
            strong[i] = value >= used[i]
            if record:
                self.observe(value, strong[i])
        return strong, used

    def state(self) -> dict:
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "strong_ratio_target": self.strong_ratio,
            "realised_strong_ratio": self.realised_ratio,
            "window": self.window.size,
            "live_decisions": self.n_live,
            "reference_in_window": self.window.n_seed,
        }
