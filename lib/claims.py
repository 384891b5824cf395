"""Judging a table's claims (lib/tables.py Claim) on per-seed numbers: pure functions, numbers in, verdicts out.

Every claim is checked seed by seed, on runs that share a seed (the same initial weights and data order where
the methods allow it), so that what varies between seeds cancels in the difference:

  above     d_s = value(left, s) - value(right, s);
  within    d_s = |value(left, s) - value(right, s)|, against a tolerance;
  best      per seed, whether the largest value among the rows is one of the expected rows;
  positive  per seed, a table-level number (a rank correlation) against 0.

Verdicts, from the n same-seed numbers: "held" when the mean difference is positive by more than a one-sided
t-test at 5% allows for chance (mean > t(0.95, n-1) * std / sqrt(n)); "not held" when it is negative by as
much; otherwise "cannot tell", which is also the verdict for one seed. For `best`, which has no size, "held"
needs every seed, "not held" no seed. `within` is an equivalence test (the two one-sided tests, TOST): "held"
when the mean absolute difference plus its t-margin is below the tolerance, "not held" when the mean minus the
margin is above it. With three seeds, a difference that keeps its sign in all three is held only if it is
also large against its spread: t(0.95, 2) = 2.92.
"""
import math

import numpy as np
from scipy import stats


def mean_std(values):
    """(mean, sample std) of a list of numbers; std is None for fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return None, None
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def t_margin(values):
    """t(0.95, n-1) * std / sqrt(n): how far from 0 the mean of n numbers must be to tell (one-sided, 5%)."""
    n = len(values)
    if n < 2:
        return math.inf
    return float(stats.t.ppf(0.95, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def judge_differences(diffs):
    """The verdict of an `above` or `positive` claim from its per-seed differences (claim holds when > 0)."""
    diffs = [float(d) for d in diffs]
    mean, std = mean_std(diffs)
    margin = t_margin(diffs)
    if mean is not None and mean > margin:
        verdict = "held"
    elif mean is not None and mean < -margin:
        verdict = "not held"
    else:
        verdict = "cannot tell"
    return {"verdict": verdict, "held_in": sum(d > 0 for d in diffs), "seeds": len(diffs), "values": diffs,
            "mean": mean, "std": std, "margin": None if math.isinf(margin) else margin}


def judge_within(diffs, tolerance):
    """The verdict of a `within` claim from the per-seed differences (left - right) and the tolerance."""
    diffs = [float(d) for d in diffs]
    size = [abs(d) for d in diffs]
    mean, std = mean_std(diffs)
    margin = t_margin(diffs)
    centre = abs(mean) if mean is not None else math.nan
    if centre + margin < tolerance:
        verdict = "held"
    elif centre - margin > tolerance:
        verdict = "not held"
    else:
        verdict = "cannot tell"
    return {"verdict": verdict, "held_in": sum(s < tolerance for s in size), "seeds": len(diffs), "values": diffs,
            "mean": mean, "std": std, "margin": None if math.isinf(margin) else margin, "tolerance": tolerance}


def judge_best(winners, expected):
    """The verdict of a `best` claim from the winning row of each seed."""
    hits = [w in expected for w in winners]
    n, k = len(hits), sum(hits)
    verdict = "cannot tell" if n < 2 else "held" if k == n else "not held" if k == 0 else "cannot tell"
    return {"verdict": verdict, "held_in": k, "seeds": n, "winners": list(winners), "expected": list(expected)}


def pick_metric(metric, sides):
    """The metric a claim compares: metric itself, or the first of a tuple of names that every side (a dict of
    metric -> per-seed values) has; None when none is there."""
    names = (metric,) if isinstance(metric, str) else tuple(metric)
    return next((name for name in names if all(name in side for side in sides)), None)


def judge(claim, values):
    """claim: a lib.tables.Claim; values: (row key, metric) -> {seed: number} ("" as row key: the table-level
    numbers). Returns the verdict dict with the claim's text and kind, or None when the budget lacks a side."""
    def side(row):
        return {m: v for (r, m), v in values.items() if r == row}

    if claim.kind in ("above", "within"):
        (lrow, lmetric), (rrow, rmetric) = claim.left, claim.right
        left, right = side(lrow), side(rrow)
        if lmetric == rmetric:
            lmetric = rmetric = pick_metric(lmetric, (left, right))
        if lmetric not in left or rmetric not in right:
            return None
        seeds = sorted(set(left[lmetric]) & set(right[rmetric]))
        if not seeds:
            return None
        diffs = [left[lmetric][s] - right[rmetric][s] for s in seeds]
        result = judge_differences(diffs) if claim.kind == "above" else judge_within(diffs, claim.tolerance)
        result.update(compared=[f"{lrow}.{lmetric}" if lrow else lmetric, f"{rrow}.{rmetric}" if rrow else rmetric])
    elif claim.kind == "best":
        present = [row for row in claim.rows if (row, pick_metric(claim.metric, [side(row)])) in values]
        metric = pick_metric(claim.metric, [side(row) for row in present]) if present else None
        if len(present) < 2 or metric is None:
            return None
        seeds = sorted(set.intersection(*(set(values[(row, metric)]) for row in present)))
        if not seeds:
            return None
        winners = [max(present, key=lambda row: values[(row, metric)][s]) for s in seeds]
        result = judge_best(winners, [row for row in claim.expected if row in present] or claim.expected)
        result.update(compared=[f"{row}.{metric}" for row in present])
    elif claim.kind == "positive":
        if ("", claim.metric) not in values:
            return None
        numbers = values[("", claim.metric)]
        result = judge_differences([numbers[s] for s in sorted(numbers)])
        result.update(compared=[claim.metric])
    else:
        raise ValueError(f"unknown claim kind {claim.kind!r}")
    return {"claim": claim.text, "kind": claim.kind, **result}
