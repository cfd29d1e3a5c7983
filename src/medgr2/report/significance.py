"""Uncertainty of accuracies and of differences between two arms: pure functions on 0/1 correctness arrays.

Two sources of noise make a reported accuracy uncertain, and a cell averages over both:

- **the test questions** (a finite sample of the questions the claim is about): estimated by a bootstrap over
  questions. When several seeds were evaluated on the same questions, each question's correctness is first
  averaged over the seeds and the questions are resampled once for all seeds (the seeds share them);
- **the seed** (training order, sampling, initialisation of what the run trains): estimated by the spread of
  the per-seed accuracies, ``s^2 / n``.

:func:`combine` adds the two variances and refers the estimate to a Student-t distribution with
Welch-Satterthwaite degrees of freedom (the question part has many, the seed part ``n - 1``), so the interval
and the p-value agree: a 95% interval excludes 0 exactly when p < 0.05. With one seed only the question part
is left and the result says so (``n_seeds == 1``). Within one seed a paired comparison also gets McNemar's
exact test on the discordant questions (:func:`mcnemar_exact`). ``docs/statistics.md`` explains how to read
the numbers. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

LEVEL = 0.95
N_BOOT = 2000
BOOT_SEED = 0  # fixed, so a report is reproducible to the last digit

VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def small_verdict(margin: float) -> str:
    """The verdict of a gain that is real (its interval above 0) but entirely under ``margin``."""
    return f"reproduced, under {100 * margin:g} point{'' if 100 * margin == 1 else 's'}"


@dataclass(frozen=True)
class Estimate:
    """A mean (accuracy or difference of accuracies) with its ``level`` interval ``[lo, hi]``.

    ``se_questions`` and ``se_seeds`` are the two standard-error parts (NaN when unknown), ``df`` the
    degrees of freedom of the t reference (``inf``: normal), ``p`` the two-sided p-value of ``value == 0``.
    """

    value: float
    lo: float
    hi: float
    n_seeds: int
    n_questions: int
    se_questions: float = math.nan
    se_seeds: float = math.nan
    df: float = math.inf
    p: float = math.nan
    level: float = LEVEL
    per_seed: tuple[float, ...] = field(default=())

    @property
    def half_width(self) -> float:
        """Half the interval's width (the ``±`` of a cell)."""
        return (self.hi - self.lo) / 2

    @property
    def se(self) -> float:
        """The combined standard error."""
        parts = [s for s in (self.se_questions, self.se_seeds) if not math.isnan(s)]
        return math.sqrt(sum(s * s for s in parts)) if parts else math.nan


def as_matrix(correct: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``seeds x questions`` float array of 0/1 correctness (a 1-D input is one seed)."""
    arr = np.asarray(correct, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"correctness must be seeds x questions with at least one question, got shape {arr.shape}")
    return arr


def bootstrap_means(values: Sequence[float] | np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """``n_boot`` means of ``values`` resampled with replacement (``numpy.random.default_rng(seed)``)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"bootstrap_means wants a non-empty 1-D array, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))  # [n_boot, n]
    return v[idx].mean(axis=1)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    a = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(replicates, dtype=float), [a, 1 - a])
    return float(lo), float(hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: ``b`` questions only arm A got right,
    ``c`` only arm B got right. Under H0 (same accuracy) ``b ~ Binomial(b + c, 1/2)``; 1.0 when ``b + c == 0``."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def discordant(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """``(only A right, only B right)`` for paired 0/1 correctness."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum())


def combine(value: float, se_questions: float, per_seed: Sequence[float], n_questions: int,
            level: float = LEVEL) -> Estimate:
    """Interval for ``value`` from the question part ``se_questions`` (NaN: unknown) and the spread of the
    ``per_seed`` values (``s / sqrt(n)``, needs n >= 2), t with Welch-Satterthwaite degrees of freedom."""
    n = len(per_seed)
    vq = se_questions**2 if not math.isnan(se_questions) else math.nan
    vs = float(np.var(per_seed, ddof=1)) / n if n >= 2 else math.nan
    parts = [v for v in (vq, vs) if not math.isnan(v)]
    if not parts:
        return Estimate(value, math.nan, math.nan, n, n_questions, se_questions, math.nan, math.nan, math.nan,
                        level, tuple(float(x) for x in per_seed))
    var = sum(parts)
    if math.isnan(vs):
        df = math.inf
    elif vs == 0:
        df = math.inf if not math.isnan(vq) else float(n - 1)
    else:
        df = var**2 / (vs**2 / (n - 1))  # the question part's own df is taken as infinite
    se = math.sqrt(var)
    q = stats.norm.ppf(0.5 + level / 2) if math.isinf(df) else stats.t.ppf(0.5 + level / 2, df)
    if se > 0:
        z = abs(value) / se
        p = float(2 * (stats.norm.sf(z) if math.isinf(df) else stats.t.sf(z, df)))
    else:
        p = 1.0 if value == 0 else 0.0
    return Estimate(value, value - q * se, value + q * se, n, n_questions, se_questions,
                    math.sqrt(vs) if not math.isnan(vs) else math.nan, df, p, level, tuple(float(x) for x in per_seed))


def accuracy_estimate(correct, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> Estimate:
    """Mean accuracy over seeds with its interval, from ``seeds x questions`` correctness on shared questions."""
    m = as_matrix(correct)
    per_seed = m.mean(axis=1)
    per_question = m.mean(axis=0)  # averaged over seeds first: the seeds share the questions
    se_q = float(np.std(bootstrap_means(per_question, n_boot, seed), ddof=1))
    return combine(float(per_seed.mean()), se_q, per_seed.tolist(), m.shape[1], level)


def accuracy_from_values(accs: Sequence[float], n_questions: int | None = None, level: float = LEVEL) -> Estimate:
    """Interval from logged accuracies only (no per-question predictions): the question part is the
    binomial ``sqrt(p (1 - p) / N)`` when ``n_questions`` is known, else unknown."""
    accs = [float(a) for a in accs]
    mean = float(np.mean(accs))
    se_q = math.sqrt(mean * (1 - mean) / n_questions) if n_questions else math.nan
    return combine(mean, se_q, accs, int(n_questions or 0), level)


@dataclass(frozen=True)
class Comparison:
    """Arm B minus arm A on the same questions: ``estimate`` of the accuracy difference (its ``p`` is the
    test's p-value), per-seed McNemar results, and how the p-value was obtained (``test``)."""

    estimate: Estimate
    test: str
    seeds: tuple[str, ...] = ()
    mcnemar: tuple[tuple[int, int, float], ...] = ()  # per seed: (only A right, only B right, exact p)
    acc_a: tuple[float, ...] = ()
    acc_b: tuple[float, ...] = ()


def paired_comparison(a, b, seeds: Sequence[str] | None = None, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                      level: float = LEVEL) -> Comparison:
    """B - A from seed-matched ``seeds x questions`` correctness on the same questions (row i of ``a`` and
    of ``b`` come from the same seed).

    One seed: the paired-bootstrap percentile interval and McNemar's exact p. Several: the mean of the
    per-seed differences, the question part by a paired bootstrap of the seed-averaged per-question
    differences, the seed part by their spread (:func:`combine`); p from that t reference (a seed-matched
    paired test). McNemar per seed is kept either way.
    """
    ma, mb = as_matrix(a), as_matrix(b)
    if ma.shape != mb.shape:
        raise ValueError(f"arms must be seed-matched on the same questions: shapes {ma.shape} vs {mb.shape}")
    n_seeds, n_q = ma.shape
    names = tuple(seeds) if seeds is not None else tuple(str(i) for i in range(n_seeds))
    mcn = []
    for i in range(n_seeds):
        only_a, only_b = discordant(ma[i], mb[i])
        mcn.append((only_a, only_b, mcnemar_exact(only_a, only_b)))
    per_seed = (mb.mean(axis=1) - ma.mean(axis=1)).tolist()
    diff_q = (mb - ma).mean(axis=0)  # [questions]: seed-averaged paired differences
    reps = bootstrap_means(diff_q, n_boot, seed)
    se_q = float(np.std(reps, ddof=1))
    value = float(np.mean(per_seed))
    if n_seeds == 1:
        lo, hi = percentile_interval(reps, level)
        est = Estimate(value, lo, hi, 1, n_q, se_q, math.nan, math.inf, mcn[0][2], level, tuple(per_seed))
        test = "McNemar exact, 1 seed"
    else:
        est = combine(value, se_q, per_seed, n_q, level)
        test = f"seed-matched t, {n_seeds} seeds (df {format_df(est.df)})"
    return Comparison(est, test, names, tuple(mcn), tuple(ma.mean(axis=1).tolist()), tuple(mb.mean(axis=1).tolist()))


def verdict(est: Estimate, relation: str = ">", margin: float = 0.01) -> str:
    """``reproduced`` / ``not reproduced`` / ``inconclusive`` for a claim about a difference B - A.

    ``">"`` (B beats A): reproduced when the interval lies above 0 — ``reproduced, under <margin> point`` when it
    also lies below ``margin`` (a real gain, but too small to be the claimed one); not reproduced when it lies
    below ``margin`` otherwise (any gain is smaller than the margin, or B is worse); else inconclusive.
    ``">="`` (B reaches A, non-inferiority): reproduced when the interval lies above ``-margin``; not
    reproduced when it lies below 0 (B is worse); else inconclusive. A NaN interval is inconclusive.
    """
    if math.isnan(est.lo) or math.isnan(est.hi):
        return "inconclusive"
    if relation == ">":
        if est.lo > 0:
            return small_verdict(margin) if est.hi < margin else "reproduced"
        return "not reproduced" if est.hi < margin else "inconclusive"
    if relation == ">=":
        if est.lo > -margin:
            return "reproduced"
        return "not reproduced" if est.hi < 0 else "inconclusive"
    raise ValueError(f"relation must be '>' or '>=', got {relation!r}")


def format_estimate(est: Estimate, digits: int = 1, signed: bool = False) -> str:
    """``"80.3 ± 1.2 (3 seeds)"`` in percent; ``(1 seed)`` says the seed spread is not in the interval."""
    if math.isnan(est.value):
        return "–"
    sign = "+" if signed else ""
    body = f"{100 * est.value:{sign}.{digits}f}"
    if not math.isnan(est.half_width):
        body += f" ± {100 * est.half_width:.{digits}f}"
    return body + (f" ({est.n_seeds} seeds)" if est.n_seeds != 1 else " (1 seed)")


def format_df(df: float) -> str:
    """Degrees of freedom for a table: one decimal, ``>999`` when the question part dominates."""
    return ">999" if df > 999 else f"{df:.1f}"


def format_p(p: float) -> str:
    """A p-value for a table: three significant digits, ``<0.001`` below that."""
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3g}"
