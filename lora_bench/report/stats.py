"""The statistics, done right: intervals from seeds (or, with one seed, from the test examples),
tests that refuse to run on too few samples and say why, effect sizes beside every p-value, Holm
correction over a family of tests, and equivalence (TOST, interval against a margin) for claims of
"no effect" or "plateau" instead of a non-significant p-value.

Functions here take plain arrays; `cells.py` decides which one fits a comparison."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

ALPHA = 0.05
BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 0


@dataclass
class TestResult:
    """One hypothesis test, or the reason it was not run (`reason` set, `p` None)."""

    test: str
    subject: str
    n: str
    statistic: float | None = None
    p: float | None = None
    effect: float | None = None
    effect_name: str | None = None
    p_holm: float | None = None
    reason: str | None = None

    @property
    def ran(self) -> bool:
        return self.p is not None

    @property
    def significant(self) -> bool:
        p = self.p_holm if self.p_holm is not None else self.p
        return p is not None and p < ALPHA


def not_run(test: str, subject: str, n: str, reason: str) -> TestResult:
    return TestResult(test, subject, n, reason=reason)


# ---------------------------------------------------------------------------------------- intervals

def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds with a t interval; NaN bounds with fewer than two seeds."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = sps.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def welch_diff_ci(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Difference of seed means (x - y) with a Welch interval; needs two seeds on each side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return diff, math.nan, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, diff, diff
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = sps.t.ppf(0.5 + level / 2, df) * se
    return diff, diff - half, diff + half


def bootstrap_indices(n: int, rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Resampled example indices (rounds x n); one shared draw makes comparisons on one test set paired."""
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def metric_values(metric: str, pred: np.ndarray, labels: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """`accuracy` or `macro_f1`/`weighted_f1` from predictions, once per row of `idx` (or once if None)."""
    idx = np.arange(len(labels))[None, :] if idx is None else idx
    p, t = pred[idx], labels[idx]
    if metric == "accuracy":
        return (p == t).mean(axis=1)
    classes = np.unique(labels)
    f1s, support = [], []
    for c in classes:
        tp = ((p == c) & (t == c)).sum(axis=1)
        fp = ((p == c) & (t != c)).sum(axis=1)
        fn = ((p != c) & (t == c)).sum(axis=1)
        denom = 2 * tp + fp + fn
        f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        support.append((t == c).sum(axis=1))
    f1, sup = np.array(f1s), np.array(support)
    if metric == "macro_f1":
        present = sup > 0
        return (f1 * present).sum(axis=0) / np.maximum(present.sum(axis=0), 1)
    if metric == "weighted_f1":
        return (f1 * sup).sum(axis=0) / np.maximum(sup.sum(axis=0), 1)
    raise ValueError(f"no per-example bootstrap for {metric!r}")


BOOTSTRAP_METRICS = ("accuracy", "macro_f1", "weighted_f1")


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [50 - level * 50, 50 + level * 50])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------- tests

def mwu_min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p an exact Mann-Whitney U test can give for these sample sizes."""
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def mann_whitney(x: Sequence[float], y: Sequence[float], subject: str) -> TestResult:
    """Mann-Whitney U over seeds; effect size: rank-biserial correlation (+1: x always higher).
    Not run when even the most extreme outcome could not reach p < 0.05."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = f"{len(x)} vs {len(y)} seeds"
    if len(x) == 0 or len(y) == 0 or mwu_min_p(len(x), len(y)) >= ALPHA:
        return not_run("Mann-Whitney U", subject, n, f"{n} cannot reach p<{ALPHA:g} "
                       f"(smallest possible p={mwu_min_p(len(x), len(y)):.2g}); needs 4 seeds a side")
    res = sps.mannwhitneyu(x, y, alternative="two-sided")
    return TestResult("Mann-Whitney U", subject, n, float(res.statistic), float(res.pvalue),
                      2 * float(res.statistic) / (len(x) * len(y)) - 1, "rank-biserial r")


def hedges_g(x: Sequence[float], y: Sequence[float]) -> float:
    """Standardised mean difference with the small-sample correction."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2))
    if pooled == 0:
        return math.nan
    return (x.mean() - y.mean()) / pooled * (1 - 3 / (4 * (len(x) + len(y)) - 9))


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray, subject: str, note: str = "") -> TestResult:
    """McNemar's exact test on paired per-example correctness; effect: the accuracy difference a - b."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = f"{len(a)} paired test examples{note}"
    if only_a + only_b == 0:
        return TestResult("McNemar", subject, n, 0.0, 1.0, 0.0, "accuracy difference")
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    res = sm_mcnemar(table, exact=True)
    return TestResult("McNemar", subject, n + f"; discordant {only_a}/{only_b}", float(res.statistic),
                      float(res.pvalue), float(a.mean() - b.mean()), "accuracy difference")


def kruskal(groups: dict[str, Sequence[float]], subject: str, min_size: int = 3) -> TestResult:
    """Kruskal-Wallis across levels; effect size epsilon-squared. Needs `min_size` seeds per level."""
    sizes = {k: len(v) for k, v in groups.items()}
    n = ", ".join(f"{k}: {s}" for k, s in sizes.items()) + " seeds"
    if len(groups) < 2:
        return not_run("Kruskal-Wallis", subject, n, "needs at least two levels")
    small = [k for k, s in sizes.items() if s < min_size]
    if small:
        return not_run("Kruskal-Wallis", subject, n, f"needs {min_size} seeds per level; "
                       f"{', '.join(small)} {'has' if len(small) == 1 else 'have'} fewer")
    values = [np.asarray(v, float) for v in groups.values()]
    if np.ptp(np.concatenate(values)) == 0:
        return not_run("Kruskal-Wallis", subject, n, "all values identical")
    res = sps.kruskal(*values)
    total = sum(sizes.values())
    return TestResult("Kruskal-Wallis", subject, n, float(res.statistic), float(res.pvalue),
                      float(res.statistic) / (total - 1), "epsilon²")


def levene(groups: dict[str, Sequence[float]], subject: str, min_size: int = 3) -> TestResult:
    """Levene (median-centred) for equal seed-to-seed spread across levels; effect: largest / smallest SD."""
    sizes = {k: len(v) for k, v in groups.items()}
    n = ", ".join(f"{k}: {s}" for k, s in sizes.items()) + " seeds"
    if len(groups) < 2:
        return not_run("Levene", subject, n, "needs at least two levels")
    small = [k for k, s in sizes.items() if s < min_size]
    if small:
        return not_run("Levene", subject, n, f"needs {min_size} seeds per level to compare spreads; "
                       f"{', '.join(small)} {'has' if len(small) == 1 else 'have'} fewer")
    values = [np.asarray(v, float) for v in groups.values()]
    sds = [v.std(ddof=1) for v in values]
    if max(sds) == 0:
        return not_run("Levene", subject, n, "no spread at any level")
    res = sps.levene(*values, center="median")
    ratio = max(sds) / min(sds) if min(sds) > 0 else math.inf
    return TestResult("Levene", subject, n, float(res.statistic), float(res.pvalue), float(ratio), "SD ratio")


def anova_two_way(df: pd.DataFrame, y: str, a: str, b: str, subject: str) -> list[TestResult]:
    """Two-way ANOVA `y ~ C(a) * C(b)` (type II) with partial eta-squared per term. The interaction
    needs at least two seeds in every cell; without them only the main effects are tested."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    data = pd.DataFrame({"y": df[y].astype(float), "A": df[a].astype(str), "B": df[b].astype(str)}).dropna()
    names = {"C(A)": a, "C(B)": b, "C(A):C(B)": f"{a} × {b}"}
    counts = data.groupby(["A", "B"]).size()
    levels_a, levels_b = data["A"].nunique(), data["B"].nunique()
    n = f"{levels_a} {a} × {levels_b} {b} levels, {len(data)} experiments"
    if levels_a < 2 or levels_b < 2:
        return [not_run("two-way ANOVA", subject, n, f"needs two levels of each of {a} and {b}")]
    if len(counts) < levels_a * levels_b:
        return [not_run("two-way ANOVA", subject, n, f"not every {a} was run at every {b}")]
    interaction = bool((counts >= 2).all())
    formula = "y ~ C(A) * C(B)" if interaction else "y ~ C(A) + C(B)"
    dof = len(data) - (levels_a * levels_b if interaction else levels_a + levels_b - 1)
    if dof < 1:
        return [not_run("two-way ANOVA", subject, n, "no residual degrees of freedom")]
    if data["y"].var() == 0:
        return [not_run("two-way ANOVA", subject, n, "all values identical")]
    table = anova_lm(smf.ols(formula, data=data).fit(), typ=2)
    resid = table.loc["Residual", "sum_sq"]
    out = []
    for term, row in table.drop(index="Residual").iterrows():
        eta = row["sum_sq"] / (row["sum_sq"] + resid) if row["sum_sq"] + resid > 0 else math.nan
        out.append(TestResult("two-way ANOVA", f"{subject}: {names[term]}", n, float(row["F"]), float(row["PR(>F)"]),
                              float(eta), "partial η²"))
    if not interaction:
        out.append(not_run("two-way ANOVA", f"{subject}: {a} × {b}", n,
                           "interaction needs at least two seeds in every cell"))
    return out


def spearman(x: Sequence[float], y: Sequence[float], subject: str, min_points: int = 5) -> TestResult:
    """Spearman's rho (it is its own effect size). Needs `min_points` points and three distinct values a side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = f"{len(x)} points"
    if len(x) < min_points:
        return not_run("Spearman", subject, n, f"needs {min_points} points")
    if len(np.unique(x)) < 3 or len(np.unique(y)) < 3:
        return not_run("Spearman", subject, n, "needs three distinct values on each axis")
    res = sps.spearmanr(x, y)
    return TestResult("Spearman", subject, n, float(res.statistic), float(res.pvalue), float(res.statistic), "ρ")


def holm(results: list[TestResult]) -> list[TestResult]:
    """Holm's step-down correction over the tests that ran, written into `p_holm`."""
    from statsmodels.stats.multitest import multipletests

    ran = [r for r in results if r.ran]
    if ran:
        adjusted = multipletests([r.p for r in ran], method="holm")[1]
        for r, p in zip(ran, adjusted):
            r.p_holm = float(p)
    return results


# ---------------------------------------------------------------------------------------- equivalence

@dataclass
class Equivalence:
    """Is |difference| < margin shown? By TOST over seeds or a 90% bootstrap interval inside ±margin."""

    method: str
    margin: float
    lo: float
    hi: float
    p: float | None = None
    reason: str | None = None

    @property
    def shown(self) -> bool:
        return self.reason is None and -self.margin < self.lo and self.hi < self.margin


def tost_seeds(x: Sequence[float], y: Sequence[float], margin: float) -> Equivalence:
    """TOST (Welch) for |mean x - mean y| < margin over seeds."""
    from statsmodels.stats.weightstats import ttost_ind

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or len(y) < 2:
        return Equivalence("TOST", margin, math.nan, math.nan, reason="needs two seeds a side")
    diff, lo, hi = welch_diff_ci(x, y, level=0.90)
    if x.var() == 0 and y.var() == 0:
        p = 0.0 if abs(diff) < margin else 1.0
    else:
        p = float(ttost_ind(x, y, -margin, margin, usevar="unequal")[0])
    return Equivalence("TOST (Welch, seeds)", margin, lo, hi, p)


def equivalence_from_bootstrap(diffs: np.ndarray, margin: float) -> Equivalence:
    """Interval against margin: the 90% paired-bootstrap interval of the difference inside ±margin."""
    lo, hi = percentile_ci(diffs, 0.90)
    return Equivalence("90% paired bootstrap vs margin", margin, lo, hi)


# ---------------------------------------------------------------------------------------- plateau, noise

@dataclass
class Plateau:
    """The smallest level reaching `fraction` of the best mean, with a bootstrap interval over levels."""

    level: float
    best_level: float
    best: float
    fraction: float
    interval: tuple[float, float] | None
    reason: str | None = None


def plateau(levels: Sequence[float], means: Sequence[float], boot: np.ndarray | None,
            fraction: float = 0.99, higher_is_better: bool = True) -> Plateau:
    """`boot` holds bootstrap replicates of the means (rounds x levels); each replicate gives a
    plateau level, and their 2.5-97.5 percentiles (as levels) are the interval."""
    levels, means = np.asarray(levels, float), np.asarray(means, float)
    order = np.argsort(levels)
    levels, means = levels[order], means[order]
    pick = _plateau_index(means[None, :], fraction, higher_is_better)[0]
    best = int(np.nanargmax(means) if higher_is_better else np.nanargmin(means))
    if boot is None:
        return Plateau(levels[pick], levels[best], means[best], fraction, None,
                       reason="no interval: one seed and no stored predictions at some level")
    picks = levels[_plateau_index(boot[:, order], fraction, higher_is_better)]
    lo, hi = np.percentile(picks, [2.5, 97.5], method="inverted_cdf")
    return Plateau(levels[pick], levels[best], means[best], fraction, (float(lo), float(hi)))


def _plateau_index(values: np.ndarray, fraction: float, higher_is_better: bool) -> np.ndarray:
    if higher_is_better:
        target = np.nanmax(values, axis=1, keepdims=True) * fraction
        reached = values >= target
    else:
        target = np.nanmin(values, axis=1, keepdims=True) / fraction
        reached = values <= target
    return np.argmax(reached, axis=1)


def noise_floor(df: pd.DataFrame, metric: str, group: str = "config") -> tuple[float | None, int]:
    """Pooled seed-to-seed standard deviation over configurations run with two or more seeds,
    and how many such configurations there are; None when there are none."""
    sizes = df.groupby(group)[metric].agg(["count", "var"]).dropna()
    sizes = sizes[sizes["count"] >= 2]
    if sizes.empty:
        return None, 0
    dof = (sizes["count"] - 1).sum()
    return float(math.sqrt(((sizes["count"] - 1) * sizes["var"]).sum() / dof)), len(sizes)


def seed_bootstrap(values: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Bootstrap replicates of a mean over seeds (resampling seeds), for plateau intervals."""
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)


def describe_p(result: TestResult) -> str:
    """`p=0.003 (Holm 0.009)` or the reason the test was not run."""
    if not result.ran:
        return f"not run: {result.reason}"
    text = p_text(result.p)
    if result.p_holm is not None and result.p_holm != result.p:
        text += f" (Holm {fmt_p(result.p_holm)})"
    return text


def p_text(p: float | None) -> str:
    """`p=0.003` or `p<0.001`."""
    text = fmt_p(p)
    return "p" + (text if text.startswith("<") else "=" + text)


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"

