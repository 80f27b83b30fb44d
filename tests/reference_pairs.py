"""Per-anchor reference miners and losses, written straight from the formulas (METHODS.md §1–3).

Deliberately naive: a Python loop over anchors, index lists instead of masks, float64 maths. Used
only as test oracles for the vectorised code in dmltune.pairs.
"""

from __future__ import annotations

import math

import torch


def anchor_sets(labels, i):
    labels = labels.tolist()
    pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
    neg = [k for k in range(len(labels)) if labels[k] != labels[i]]
    return pos, neg


def reference_mine(name, sim, labels, **p):
    """Kept pairs as two B×B bool masks, and the thresholds used, per METHODS.md §1."""
    b = sim.shape[0]
    s = sim.detach()  # compare in the similarities' own dtype, as any implementation must
    keep_pos = torch.zeros(b, b, dtype=torch.bool)
    keep_neg = torch.zeros(b, b, dtype=torch.bool)
    extra = {}
    if name == "at_asms":
        gp, gn, kappa = p.get("gamma_pos", 0.1), p.get("gamma_neg", 0.01), p.get("kappa", 0.5)
        count_with = gn if p.get("count_neg_with", "gamma_neg") == "gamma_neg" else gp
        n_neg, n_pos_all = 0, 0
        for i in range(b):
            pos, neg = anchor_sets(labels, i)
            n_pos_all += len(pos)
            if pos:
                hardest_pos = min(s[i, j] for j in pos)
                n_neg += sum(1 for k in neg if s[i, k] + count_with > hardest_pos)
        xi = n_neg / n_pos_all if n_pos_all else 0.0
        if xi > 1:
            sig = 1 / (1 + math.exp(-xi))
            if p.get("negative_update", "literal") == "literal":  # eq. 12–13 as written
                gp, gn = gp + kappa * gp * sig, gn - kappa * gn * sig
            else:  # widen positives, tighten negatives whatever the sign of γ
                gp, gn = gp + kappa * abs(gp) * sig, gn - kappa * abs(gn) * sig
        extra = {"xi": xi, "gamma_pos": gp, "gamma_neg": gn}
        name, p = "asms", {"gamma_pos": gp, "gamma_neg": gn}
    for i in range(b):
        pos, neg = anchor_sets(labels, i)
        max_neg = max((s[i, k] for k in neg), default=-math.inf)
        min_pos = min((s[i, j] for j in pos), default=math.inf)
        for j in pos:
            v = s[i, j]
            if name == "none":
                keep = True
            elif name == "ms":
                keep = v - p.get("epsilon", 0.1) < max_neg
            elif name == "asms":
                keep = v - p.get("gamma_pos", 0.1) < max_neg
            elif name == "dsml":
                keep = v < p.get("tau_p", 0.9)
            keep_pos[i, j] = bool(keep)
        for k in neg:
            v = s[i, k]
            if name == "none":
                keep = True
            elif name == "ms":
                keep = v + p.get("epsilon", 0.1) > min_pos
            elif name == "asms":
                keep = v + p.get("gamma_neg", 0.01) > min_pos
            elif name == "dsml":
                keep = v > p.get("tau_n", 0.1) and v > min_pos - p.get("tau_b", 0.2)
            keep_neg[i, k] = bool(keep)
    return keep_pos, keep_neg, extra


def _softplus(x):
    return torch.logaddexp(x, torch.zeros_like(x))


def _log1p_sum_exp(x):
    return torch.logsumexp(torch.cat([x, torch.zeros(1, dtype=x.dtype)]), dim=0)


def reference_anchor_loss(name, s_pos, s_neg, r=None, **p):
    """L_i of one anchor from its mined positive and negative similarities (1-D tensors)."""
    lam = p.get("lam")
    dynamic = p.get("dynamic", False)
    tau_p, tau_n = p.get("tau_p", 0.9), p.get("tau_n", 0.1)
    r = r if dynamic else 0.0
    w_p = 2 * r * (tau_p - s_pos) ** 2
    w_n = 2 * r * (s_neg - tau_n) ** 2
    if name == "contrastive":
        a_pos, a_neg = p.get("pos_margin", 1.0), p.get("neg_margin", 0.5)
        return torch.relu(a_pos - s_pos).mean() + torch.relu(s_neg - a_neg).mean()
    if name == "triplet":
        m = p.get("margin", 0.1)
        if dynamic and p.get("tp_form", "paper") == "paper":  # DSML eq. 10: one hinge over the means
            return torch.relu((-s_pos + w_p).mean() + (s_neg + w_n).mean() + m)
        # every (positive j, negative k) combination of this anchor, one hinge per triplet
        hinge = torch.relu(s_neg[None, :] - s_pos[:, None] + m + w_p[:, None] + w_n[None, :])
        return hinge.mean()
    if name == "lifted":
        lam = 1.0 if lam is None else lam
        return torch.relu(torch.logsumexp(lam - s_pos + w_p, 0) + torch.logsumexp(s_neg + w_n, 0))
    if name == "binomial":
        alpha, beta, lam = p.get("alpha", 2.0), p.get("beta", 40.0), 0.5 if lam is None else lam
        return (_softplus(alpha * ((lam - s_pos) + w_p)).mean()
                + _softplus(beta * ((s_neg - lam) + w_n)).mean())
    if name == "ms":
        alpha, beta, lam = p.get("alpha", 2.0), p.get("beta", 50.0), 0.5 if lam is None else lam
        return (_log1p_sum_exp(-alpha * (s_pos - lam) + w_p) / alpha
                + _log1p_sum_exp(beta * (s_neg - lam) + w_n) / beta)
    if name == "soft_contrastive":
        mu, nu, lam = p.get("mu", 2.0), p.get("nu", 40.0), 0.7 if lam is None else lam
        coef = 2.0 if p.get("scaling", "paper") == "authors_code" else 1.0
        return coef * (_softplus(mu * (lam - s_pos)).mean() / mu + _softplus(nu * (s_neg - lam)).mean() / nu)
    raise ValueError(name)


def reference_loss(name, sim, pos_mask, neg_mask, progress=None, **p):
    """Σ_i L_i / B over anchors with at least one mined positive and one mined negative."""
    b = sim.shape[0]
    total = sim.sum() * 0  # stays attached to the graph when no anchor counts
    for i in range(b):
        pos = pos_mask[i].nonzero().flatten()
        neg = neg_mask[i].nonzero().flatten()
        if len(pos) and len(neg):
            total = total + reference_anchor_loss(name, sim[i, pos], sim[i, neg], progress, **p)
    return total / b
