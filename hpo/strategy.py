"""Optuna samplers and pruners by name, one registry entry each, and the reporting scheme.

A pruner entry says what it judges as data: ``reports="epoch"`` (the default: every epoch's
validation F1 on one step axis across folds) or ``reports="fold"`` (each fold's best F1, at
step = fold); ``fold_rungs=True``: it is asked after each fold as well (hpo.pruning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.errors import ConfigError
from hpo.pruning import FoldHalvingPruner
from hpo.registry import Registry


@dataclass(frozen=True)
class ReportSteps:
    """The steps a full trial reports on (see ``report_step``): ``per_fold`` in each of ``folds``."""

    folds: int
    per_fold: int

    @property
    def total(self) -> int:
        return self.folds * self.per_fold


# (seed, **Optuna's arguments) -> the sampler; (ReportSteps, **arguments) -> the pruner.
SAMPLERS: Registry[Callable[..., optuna.samplers.BaseSampler]] = Registry("sampler")
PRUNERS: Registry[Callable[..., optuna.pruners.BasePruner]] = Registry("pruner")


@SAMPLERS.register("tpe")
def tpe(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    """Optuna's TPESampler, multivariate and grouped; any of its arguments."""
    # group=True: conditional parameters (focal gamma, step size...) are modelled jointly with
    # their parent instead of falling back to independent sampling.
    args = {"multivariate": True, "group": True, **args}
    return optuna.samplers.TPESampler(seed=seed, **args)


@SAMPLERS.register("random")
def random(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    """Optuna's RandomSampler."""
    return optuna.samplers.RandomSampler(seed=seed, **args)


@SAMPLERS.register("cmaes")
def cmaes(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    """Optuna's CmaEsSampler (numbers; categorical parameters sampled at random); any of its arguments."""
    # CMA-ES handles numbers; categorical parameters go to the independent (random) sampler.
    return optuna.samplers.CmaEsSampler(seed=seed, **args)


@SAMPLERS.register("qmc")
def qmc(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    """Optuna's QMCSampler (quasi-random, Sobol by default); any of its arguments."""
    return optuna.samplers.QMCSampler(seed=seed, **args)


@PRUNERS.register("median")
def median(steps: ReportSteps, **args) -> optuna.pruners.BasePruner:
    """Optuna's MedianPruner: stops a trial below the median of earlier trials at the same step."""
    return optuna.pruners.MedianPruner(**args)


@PRUNERS.register("percentile")
def percentile(steps: ReportSteps, **args) -> optuna.pruners.BasePruner:
    """Optuna's PercentilePruner (25th percentile by default)."""
    return optuna.pruners.PercentilePruner(**{"percentile": 25.0, **args})


@PRUNERS.register("successive_halving")
def successive_halving(steps: ReportSteps, **args) -> optuna.pruners.BasePruner:
    """Optuna's SuccessiveHalvingPruner (asynchronous successive halving) on the epoch steps."""
    return optuna.pruners.SuccessiveHalvingPruner(**args)


@PRUNERS.register("hyperband")
def hyperband(steps: ReportSteps, **args) -> optuna.pruners.BasePruner:
    """Optuna's HyperbandPruner over a trial's whole step range."""
    return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": steps.total, **args})


@PRUNERS.register("wilcoxon", reports="fold")
def wilcoxon(steps: ReportSteps, **args) -> optuna.pruners.BasePruner:
    """Optuna's WilcoxonPruner on per-fold scores against the best trial's."""
    return optuna.pruners.WilcoxonPruner(**args)


@PRUNERS.register("fold_halving", fold_rungs=True)
def fold_halving(steps: ReportSteps, *, eta: float = 3.0, min_trials: int = 1, floor: float = 1.5,
                 floor_after: float = 0.0, within_fold: str = "median", within_fold_args: dict[str, Any] | None = None,
                 ) -> optuna.pruners.BasePruner:
    """Folds as a fidelity: after each fold, only the top 1/eta of the trials that reached it go on,
    and none at or below ``floor`` times chance (nor one still there after ``floor_after`` of its
    first fold's epochs); within a fold, the within_fold pruner judges the epochs
    (hpo.pruning)."""
    if PRUNERS.info(within_fold).get("fold_rungs") or reports_per_fold(within_fold):
        raise ValueError(f"within_fold must judge epochs (median, percentile, ...), not {within_fold}")
    inner = PRUNERS.get(within_fold, "pruner.within_fold")(steps, **(within_fold_args or {}))
    return FoldHalvingPruner(steps.per_fold, inner, eta=eta, min_trials=min_trials, floor=floor,
                             floor_after=floor_after)


@PRUNERS.register("none")
def no_pruning(steps: ReportSteps, **args) -> optuna.pruners.BasePruner:
    """No pruning: every trial trains every fold."""
    return optuna.pruners.NopPruner(**args)


def reports_per_fold(pruner_type: str) -> bool:
    """A pruner that compares per-instance scores (Wilcoxon) hears one report per fold (its best
    F1), step = fold; the others every epoch, on one step axis: step = fold * max_epochs + epoch."""
    return PRUNERS.info(pruner_type).get("reports", "epoch") == "fold"


def asks_after_fold(pruner_type: str) -> bool:
    """Whether the pruner judges fold boundaries too (with the trial's finished folds)."""
    return bool(PRUNERS.info(pruner_type).get("fold_rungs"))


def report_step(pruner_type: str, fold: int, epoch: int, max_epochs: int) -> int:
    return fold if reports_per_fold(pruner_type) else fold * max_epochs + epoch


def report_steps(pruner_type: str, folds: int, max_epochs: int) -> ReportSteps:
    return ReportSteps(folds, 1 if reports_per_fold(pruner_type) else max_epochs)


def check_folds_for_pruner(pruner_type: str, args: dict, folds: int) -> None:
    """Wilcoxon's signed-rank test on k folds that all favour the best trial gives p = 1/2^k at
    best: with too few folds it can never stop a trial before its last fold, where nothing is
    left to save (measured: 4 folds at p_threshold 0.1 pruned only after the 4th)."""
    if not reports_per_fold(pruner_type):
        return
    threshold = float(args.get("p_threshold", 0.1))
    if 0.5 ** (folds - 1) >= threshold:
        needed = next(k for k in range(1, 64) if 0.5**k < threshold) + 1
        raise ConfigError(
            f"pruner: wilcoxon cannot stop a trial before its last fold with cv.folds {folds} (its"
            f" smallest p-value after {folds - 1} folds is {0.5 ** (folds - 1):g}, not below p_threshold"
            f" {threshold:g}); use cv.folds >= {needed}, a larger p_threshold, or pruner: median"
        )
