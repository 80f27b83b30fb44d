"""The blocked (two-way) comparison of an arm's configurations with the reference, and the
Dunnett-type simultaneous bound that replaces Bonferroni (docs/analysis.md, "The comparison model").

Arms of one study run the same seeds, and a seed fixes the initialisation and the batch order, so a
seed moves every configuration and the reference together. The two-way model

    y_rs = μ_r + β_s + ε_rs,   ε_rs ~ N(0, σ²) independent,

with r over the arm's C configurations and the reference, and s over seeds, removes the seed effect
β_s (as pairing does), and pools σ² over every configuration: its residual degrees of freedom are
about C(n − 1) instead of n − 1 per configuration. It is fitted by least squares over the observed
cells (missing cells are allowed), so θ̂_c = μ̂_c − μ̂_ref and their covariance σ̂²·L(X'X)⁻¹L' follow
from the design. With complete data Var(θ̂_c) = 2σ²/n and corr(θ̂_c, θ̂_c') = ½: the shared
reference correlates the comparisons.

**The assumption** is one σ² for every row. It is checked per configuration: the F ratio of its own
paired-difference variance to the model's 2σ̂² (one-sided, at :data:`CHECK_LEVEL`), and for the
reference row its residual variance against σ̂². A configuration that fails falls back to its own
paired variance (n − 1 degrees of freedom); a failing reference sends every configuration there.

**The simultaneous bound**: the configurations that keep the model share one Dunnett-type max-t
quantile q with P(max_c (θ̂_c − θ_c)/se_c ≤ q) = 1 − α_share, computed from the multivariate t with
the model's correlation (``scipy.stats.multivariate_t``); the fallback configurations get Bonferroni
shares α/C each, and the model group α·k/C, so that all C lower bounds hold together at 1 − α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

CHECK_LEVEL = 0.05          # the variance check: a configuration fails at this one-sided level


@dataclass(frozen=True)
class BlockedFit:
    """Per configuration: θ̂ (its mean − the reference's, over the model), its standard error, its
    degrees of freedom, seeds, and whether it kept the pooled model (False: its own paired variance)."""

    mean: np.ndarray
    se: np.ndarray
    df: np.ndarray
    n: np.ndarray
    pooled: np.ndarray           # bool per configuration
    corr: np.ndarray             # correlation of the θ̂ (pooled configurations; identity elsewhere)
    sigma2: float                # pooled residual variance (NaN when not estimable)
    df_resid: float
    reference_ok: bool           # the reference's residual variance passed the check

    def quantile(self, level: float, rows: np.ndarray) -> np.ndarray:
        """One-sided t quantiles at ``level`` per row (inf where no degrees of freedom)."""
        df = self.df[rows]
        with np.errstate(invalid="ignore"):
            q = stats.t.ppf(level, np.where(df > 0, df, np.nan))
        return np.where(df > 0, q, np.inf)


def _design(mask: np.ndarray):
    """Least-squares design of the two-way model over the observed cells (row effects, then seed
    effects with the first observed seed as baseline)."""
    R, S = mask.shape
    r_idx, s_idx = np.nonzero(mask)
    seeds = np.unique(s_idx)
    col = {s: i for i, s in enumerate(seeds[1:])}
    X = np.zeros((len(r_idx), R + len(seeds) - 1))
    X[np.arange(len(r_idx)), r_idx] = 1.0
    for k, s in enumerate(s_idx):
        if s in col:
            X[k, R + col[s]] = 1.0
    return X, r_idx, s_idx


def fit(A: np.ndarray, b: np.ndarray, check_level: float = CHECK_LEVEL) -> BlockedFit:
    """Fit the two-way model to configurations ``A`` (C × seeds) and reference ``b`` (seeds)."""
    A = np.atleast_2d(np.asarray(A, dtype=float))
    b = np.asarray(b, dtype=float)
    C = len(A)
    Y = np.vstack([A, b[None, :]])
    mask = np.isfinite(Y)
    nan = np.full(C, np.nan)
    if C == 0 or not mask[-1].any():
        return BlockedFit(nan, nan, np.zeros(C), np.zeros(C), np.zeros(C, bool), np.eye(C), math.nan, 0.0, False)
    X, r_idx, s_idx = _design(mask)
    y = Y[mask]
    XtX_inv = np.linalg.pinv(X.T @ X)
    beta = XtX_inv @ X.T @ y
    resid = y - X @ beta
    rank = np.linalg.matrix_rank(X)
    df_resid = float(len(y) - rank)
    sigma2 = float(resid @ resid / df_resid) if df_resid > 0 else math.nan
    L = np.zeros((C, X.shape[1]))
    L[np.arange(C), np.arange(C)] = 1.0
    L[:, C] = -1.0
    observed = mask[:C].any(axis=1)
    theta = np.where(observed, L @ beta, np.nan)
    cov = L @ XtX_inv @ L.T                      # in units of σ²
    # each configuration's own paired differences over the seeds it shares with the reference
    D = A - b[None, :]
    n = np.isfinite(D).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d_mean = np.where(n > 0, np.nansum(D, axis=1) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(D), D - d_mean[:, None], 0.0)
        own_var = np.where(n > 1, (dev ** 2).sum(axis=1) / np.maximum(n - 1, 1), np.nan)
    pooled = observed & np.isfinite(sigma2) & (sigma2 > 0) & (n >= 2)
    reference_ok = True
    if np.isfinite(sigma2) and sigma2 > 0:
        # the reference row's residual variance against σ̂² (its share of the residual df: (S−1)(R−1)/R)
        ref_res = resid[r_idx == C]
        R, S_ref = C + 1, int(mask[-1].sum())
        ref_df = (S_ref - 1) * (R - 1) / R
        if ref_df > 0 and df_resid > 0:
            ratio = float(ref_res @ ref_res / ref_df / sigma2)
            reference_ok = bool(stats.f.sf(ratio, max(S_ref - 1, 1), df_resid) >= check_level)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = stats.f.sf(own_var / (2 * sigma2), np.maximum(n - 1, 1), df_resid)
        pooled &= np.where(np.isfinite(p), p >= check_level, False)
        if not reference_ok:
            pooled[:] = False
    else:
        pooled[:] = False
    with np.errstate(invalid="ignore"):
        se_model = np.sqrt(np.clip(np.diag(cov), 0, None) * sigma2)
        se_own = np.where(n >= 2, np.sqrt(own_var / np.maximum(n, 1)), np.nan)
    mean = np.where(pooled, theta, d_mean)
    se = np.where(pooled, se_model, se_own)
    df = np.where(pooled, df_resid, np.where(n >= 2, n - 1.0, 0.0))
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    corr = np.where(np.outer(pooled, pooled), cov / np.outer(sd, sd), 0.0)
    np.fill_diagonal(corr, 1.0)
    return BlockedFit(mean, se, df, n.astype(float), pooled, corr, sigma2, df_resid, reference_ok)


@lru_cache(maxsize=512)
def _max_t_quantile_cached(level: float, df: float, corr_key: tuple, k: int) -> float:
    corr = np.array(corr_key, dtype=float).reshape(k, k)
    if k == 1:
        return float(stats.t.ppf(level, df)) if df > 0 else math.inf
    dist = stats.multivariate_t(shape=corr, df=df if math.isfinite(df) else 1e6, allow_singular=True)
    lo = float(stats.t.ppf(level, df))                      # the max is at least one t's quantile
    hi = float(stats.t.ppf(1 - (1 - level) / k, df)) + 1e-6  # and at most Bonferroni's
    f = lambda q: float(dist.cdf(np.full(k, q), random_state=12345)) - level  # noqa: E731
    if f(lo) >= 0:
        return lo
    if f(hi) <= 0:
        return hi
    return float(optimize.brentq(f, lo, hi, xtol=1e-4))


def max_t_quantile(level: float, df: float, corr: np.ndarray) -> float:
    """q with P(max_i T_i ≤ q) = ``level`` for T multivariate t (``df``, correlation ``corr``)."""
    corr = np.asarray(corr, dtype=float)
    k = len(corr)
    if k == 0 or not df > 0:
        return math.inf
    key = tuple(np.round(corr, 3).ravel().tolist())
    if math.isfinite(df) and df > 30:  # floored onto a grid of ratio 1.25: q grows by < 0.5%, and is cached
        df = round(30 * 1.25 ** math.floor(math.log(df / 30) / math.log(1.25)), 6)
    return _max_t_quantile_cached(round(float(level), 10), float(df), key, k)


def simultaneous_lower(f: BlockedFit, alpha: float, total: int | None = None) -> np.ndarray:
    """Lower bounds on θ_c that hold together at 1 − α over ``total`` configurations (default: the
    fitted ones; a larger ``total`` also pays for configurations not in ``f``, as a sequential design
    that dropped some needs). −inf where a bound is not estimable."""
    C = len(f.mean)
    total = max(total or C, C)
    lower = np.full(C, -np.inf)
    est = np.isfinite(f.mean) & np.isfinite(f.se)
    group = np.flatnonzero(f.pooled & est)
    if len(group):
        share = alpha * len(group) / total
        q = max_t_quantile(1 - share, float(f.df_resid), f.corr[np.ix_(group, group)])
        lower[group] = f.mean[group] - q * f.se[group]
    own = np.flatnonzero(~f.pooled & est)
    if len(own):
        q = f.quantile(1 - alpha / total, own)
        lower[own] = f.mean[own] - q * f.se[own]
    return lower


def upper_bounds(f: BlockedFit, level: float) -> np.ndarray:
    """Each configuration's own one-sided upper bound at ``level`` (+inf where not estimable)."""
    C = len(f.mean)
    rows = np.arange(C)
    est = np.isfinite(f.mean) & np.isfinite(f.se)
    with np.errstate(invalid="ignore"):
        up = f.mean + f.quantile(level, rows) * f.se
    return np.where(est, up, np.inf)


__all__ = ["BlockedFit", "CHECK_LEVEL", "fit", "max_t_quantile", "simultaneous_lower", "upper_bounds"]
