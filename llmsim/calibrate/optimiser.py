"""A bounded, derivative-free minimiser: `fit(objective, start, bounds)`.

Why derivative-free: the objective calibration minimises is the cost model's prediction error, a sum of
maxima (roofline terms, pipeline bubbles) with kinks and flat regions where a parameter does not matter,
so it has no useful gradient. Why on logs: the parameters span orders of magnitude (an efficiency of 0.01
to 1, a bandwidth of 1e8 to 1e13 bytes/s), and a relative step means the same thing for each of them.

A cyclic golden-section search gets close, then Nelder-Mead simplexes from it and from the corners of a
box inside the bounds leave the valleys a coordinate search stalls in. Pure Python on lists of floats:
nothing here knows about llmsim (the calibration's parameters and bounds live in llmsim.calibrate.model).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

SWEEPS = 12                           # cycles of coordinate search; stops early once nothing improves
GOLDEN_STEPS = 40                     # golden-section steps per parameter: shrinks a log-range 0.618^40 ~ 1e-8
GOLDEN = (math.sqrt(5) - 1) / 2
NELDER_MEAD_ITERATIONS = 300          # simplex steps after the coordinate search (each one or two model passes)
NELDER_MEAD_RESTART_STEPS = (1.0, 0.3)  # initial simplex sizes (natural-log units) of successive restarts
MULTISTART_QUANTILES = (0.25, 0.75)     # simplex starts at these fractions of each parameter's log range


def _golden(f: Callable[[float], float], lo: float, hi: float) -> float:
    """Minimum of a unimodal f on [lo, hi] by golden-section search."""
    a, b = lo, hi
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(GOLDEN_STEPS):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    return (a + b) / 2


def _nelder_mead(f: Callable[[list[float]], float], x0: list[float], step: float = 0.3,
                 iterations: int = NELDER_MEAD_ITERATIONS) -> list[float]:
    """Minimum of f near x0 by the Nelder-Mead simplex (standard coefficients: 1, 2, 0.5, 0.5).

    Moves along combinations of parameters, which a coordinate search cannot: two factors that trade off
    against each other (per-operator overhead against memory bandwidth) stall it in a valley.
    """
    n = len(x0)
    simplex = [list(x0)] + [[v + (step if i == j else 0.0) for j, v in enumerate(x0)] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < 1e-15:
            break
        centroid = [sum(x[j] for x in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best vertex
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (v - b) for b, v in zip(best, x)] for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]


def fit(objective: Callable[[list[float]], float], start: list[float],
        bounds: Sequence[tuple[float, float]], *, sweeps: int = SWEEPS, multistart: bool = True) -> list[float]:
    """Minimise `objective` over parameters within `bounds`, on their logs: a cyclic golden-section search
    to get close, then a Nelder-Mead simplex to leave the valleys a coordinate search stalls in.

    Derivative-free and bounded (the simplex sees the objective at the nearest in-bounds point), so a
    parameter the data cannot see (e.g. attention in runs without attention time) simply stays where it was.
    `sweeps` caps the coordinate cycles; `multistart` False runs the simplex from the coordinate search's end
    only, not also from the 2^n corners of the box: for an objective that costs a simulation per call
    (llmsim.calibrate.serving), ~10x fewer calls.
    """
    x = [math.log(min(max(v, lo), hi)) for v, (lo, hi) in zip(start, bounds)]
    log_bounds = [(math.log(lo), math.log(hi)) for lo, hi in bounds]

    def clamp(logs: list[float]) -> list[float]:
        return [min(max(v, lo), hi) for v, (lo, hi) in zip(logs, log_bounds)]

    def at(logs: list[float]) -> float:
        return objective([math.exp(v) for v in clamp(logs)])

    best = at(x)
    for _ in range(sweeps):
        before = best
        for j, (lo, hi) in enumerate(log_bounds):
            trial = _golden(lambda v: at(x[:j] + [v] + x[j + 1:]), lo, hi)
            value = at(x[:j] + [trial] + x[j + 1:])
            if value < best:
                x[j], best = trial, value
        if before - best < 1e-12:
            break
    # The objective has separate valleys (measured: a 4-factor synthetic case whose true factors give 0
    # also has a 1%-error minimum across a ridge), so the simplex also starts from every corner of a box
    # at a quarter and three quarters of each log range, and the best end point wins.
    starts = [x] + ([[lo + q * (hi - lo) for (lo, hi), q in zip(log_bounds, corner)]
                     for corner in itertools.product(MULTISTART_QUANTILES, repeat=len(log_bounds))]
                    if multistart else [])
    for origin in starts:
        for step in NELDER_MEAD_RESTART_STEPS:  # a fresh simplex each time: restarts escape a collapsed one
            origin = clamp(_nelder_mead(at, origin, step))
        value = at(origin)
        if value < best:
            x, best = origin, value
    return [math.exp(v) for v in x]


LM_ITERATIONS = 40            # Levenberg-Marquardt steps at most (each n + 1 residual calls or fewer)
LM_FD_STEPS = (0.05, 0.01)    # forward-difference steps in natural-log units, one Levenberg-Marquardt run each:
                              # 5% first, wider than the jumps of a simulated objective (a median of tens of
                              # requests moves when one request changes iteration), then 1% to settle
LM_DAMPING = (1e-3, 10.0)     # initial damping and the factor it grows by after a failed step (shrinks by it / 3)
LM_TOLERANCE = 1e-12          # stop when the sum of squares improves by less than this


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """x with a x = b, by Gaussian elimination with partial pivoting (a small dense system)."""
    n = len(b)
    m = [row[:] + [v] for row, v in zip(a, b)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-300:
            return [0.0] * n
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def least_squares(residuals: Callable[[list[float]], list[float]], start: list[float],
                  bounds: Sequence[tuple[float, float]], iterations: int = LM_ITERATIONS,
                  fd_steps: Sequence[float] = LM_FD_STEPS) -> list[float]:
    """Minimise sum(residuals(theta)^2) within `bounds` by Levenberg-Marquardt on log(theta) (Marquardt 1963,
    "An Algorithm for Least-Squares Estimation of Nonlinear Parameters", SIAM J. Appl. Math. 11(2)), with a
    forward-difference Jacobian and steps clamped into the bounds; one run per difference step in `fd_steps`,
    each from where the last ended.

    For an objective whose every call is expensive (a serving simulation per measured row): it converges in
    tens of calls where `fit`'s derivative-free search needs thousands, using that the objective is a sum of
    squares of residuals that are smooth in the parameters almost everywhere. A parameter the residuals do not
    see has a zero column in the Jacobian and stays where it was (the damping keeps the system solvable).
    """
    log_bounds = [(math.log(lo), math.log(hi)) for lo, hi in bounds]

    def clamp(logs: list[float]) -> list[float]:
        return [min(max(v, lo), hi) for v, (lo, hi) in zip(logs, log_bounds)]

    def at(logs: list[float]) -> list[float]:
        return residuals([math.exp(v) for v in logs])

    x = clamp([math.log(v) for v in start])
    r = at(x)
    cost = sum(v * v for v in r)
    for fd in fd_steps:
        x, r, cost = _levenberg_marquardt(at, clamp, log_bounds, x, r, cost, iterations, fd)
    return [math.exp(v) for v in x]


POLISH_ITERATIONS = 80        # simplex steps of `polish` (each one or two residual calls; n + 1 to start)
POLISH_STEP = 0.3             # its initial simplex size, natural-log units (a third of an e-fold)


def polish(residuals: Callable[[list[float]], list[float]], start: list[float],
           bounds: Sequence[tuple[float, float]], iterations: int = POLISH_ITERATIONS) -> list[float]:
    """A Nelder-Mead simplex on log(theta) from `start` (a least-squares end point), the sum of squared
    residuals its objective: where a residual is a simulation's (a batch forms differently past a kink in
    time) a forward-difference Jacobian can point nowhere, and Levenberg-Marquardt stops short in a narrow
    valley; the simplex, which compares values only, walks along it. Returns `start` unless it found lower."""
    log_bounds = [(math.log(lo), math.log(hi)) for lo, hi in bounds]

    def clamp(logs: list[float]) -> list[float]:
        return [min(max(v, lo), hi) for v, (lo, hi) in zip(logs, log_bounds)]

    def cost(logs: list[float]) -> float:
        return sum(v * v for v in residuals([math.exp(v) for v in clamp(logs)]))

    x0 = clamp([math.log(v) for v in start])
    end = clamp(_nelder_mead(cost, x0, POLISH_STEP, iterations))
    return [math.exp(v) for v in end] if cost(end) < cost(x0) else list(start)


def _levenberg_marquardt(at: Callable[[list[float]], list[float]], clamp: Callable[[list[float]], list[float]],
                         log_bounds: list[tuple[float, float]], x: list[float], r: list[float], cost: float,
                         iterations: int, fd: float) -> tuple[list[float], list[float], float]:
    damping = LM_DAMPING[0]
    n = len(x)
    for _ in range(iterations):
        columns = []
        for j in range(n):
            step = fd if x[j] + fd <= log_bounds[j][1] else -fd
            shifted = x[:j] + [x[j] + step] + x[j + 1:]
            columns.append([(b - a) / step for a, b in zip(r, at(shifted))])
        jtj = [[sum(ci * cj for ci, cj in zip(columns[i], columns[j])) for j in range(n)] for i in range(n)]
        jtr = [sum(c * v for c, v in zip(columns[i], r)) for i in range(n)]
        improved = False
        while damping < 1e12:
            a = [[jtj[i][j] + (damping * (jtj[i][i] or 1.0) if i == j else 0.0) for j in range(n)] for i in range(n)]
            trial = clamp([xi + di for xi, di in zip(x, _solve(a, [-v for v in jtr]))])
            r_trial = at(trial)
            trial_cost = sum(v * v for v in r_trial)
            if trial_cost < cost:
                improved = cost - trial_cost >= LM_TOLERANCE
                x, r, cost = trial, r_trial, trial_cost
                damping = max(damping / (LM_DAMPING[1] / 3), 1e-12)
                break
            damping *= LM_DAMPING[1]
        if not improved:
            break
    return x, r, cost
