"""Optuna samplers and pruners by name, one registry entry each, and the reporting scheme.

A pruner entry says what it judges as data: ``reports="epoch"`` (the default: every epoch's
validation F1 on one step axis across folds) or ``reports="fold"`` (each fold's best F1, at
step = fold).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from hpo.errors import ConfigError
from hpo.registry import Registry

# (seed, **Optuna's arguments) -> the sampler; (report steps of a full trial, **arguments) -> the pruner.
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


# Pruners get the number of report steps of a full trial (see ``report_step``).
@PRUNERS.register("median")
def median(max_steps: int, **args) -> optuna.pruners.BasePruner:
    """Optuna's MedianPruner: stops a trial below the median of earlier trials at the same step."""
    return optuna.pruners.MedianPruner(**args)


@PRUNERS.register("percentile")
def percentile(max_steps: int, **args) -> optuna.pruners.BasePruner:
    """Optuna's PercentilePruner (25th percentile by default)."""
    return optuna.pruners.PercentilePruner(**{"percentile": 25.0, **args})


@PRUNERS.register("successive_halving")
def successive_halving(max_steps: int, **args) -> optuna.pruners.BasePruner:
    """Optuna's SuccessiveHalvingPruner (asynchronous successive halving) on the epoch steps."""
    return optuna.pruners.SuccessiveHalvingPruner(**args)


@PRUNERS.register("hyperband")
def hyperband(max_steps: int, **args) -> optuna.pruners.BasePruner:
    """Optuna's HyperbandPruner over a trial's whole step range."""
    return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": max_steps, **args})


@PRUNERS.register("wilcoxon", reports="fold")
def wilcoxon(max_steps: int, **args) -> optuna.pruners.BasePruner:
    """Optuna's WilcoxonPruner on per-fold scores against the best trial's."""
    return optuna.pruners.WilcoxonPruner(**args)


@PRUNERS.register("none")
def no_pruning(max_steps: int, **args) -> optuna.pruners.BasePruner:
    """No pruning: every trial trains every fold."""
    return optuna.pruners.NopPruner(**args)


def reports_per_fold(pruner_type: str) -> bool:
    """A pruner that compares per-instance scores (Wilcoxon) hears one report per fold (its best
    F1), step = fold; the others every epoch, on one step axis: step = fold * max_epochs + epoch."""
    return PRUNERS.info(pruner_type).get("reports", "epoch") == "fold"


def report_step(pruner_type: str, fold: int, epoch: int, max_epochs: int) -> int:
    return fold if reports_per_fold(pruner_type) else fold * max_epochs + epoch


def max_report_steps(pruner_type: str, folds: int, max_epochs: int) -> int:
    return folds if reports_per_fold(pruner_type) else folds * max_epochs


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
