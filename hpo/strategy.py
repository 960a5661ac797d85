"""Optuna samplers and pruners by name, one registry entry each, and the reporting scheme."""

from __future__ import annotations

import optuna

from hpo.errors import ConfigError
from hpo.registry import Registry

SAMPLERS: Registry = Registry("sampler")
PRUNERS: Registry = Registry("pruner")


@SAMPLERS.register("tpe")
def tpe(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    # group=True: conditional parameters (focal gamma, step size...) are modelled jointly with
    # their parent instead of falling back to independent sampling.
    args = {"multivariate": True, "group": True, **args}
    return optuna.samplers.TPESampler(seed=seed, **args)


@SAMPLERS.register("random")
def random(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **args)


@SAMPLERS.register("cmaes")
def cmaes(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    # CMA-ES handles numbers; categorical parameters go to the independent (random) sampler.
    return optuna.samplers.CmaEsSampler(seed=seed, **args)


@SAMPLERS.register("qmc")
def qmc(seed: int | None, **args) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(seed=seed, **args)


# Pruners get the number of report steps of a full trial (see ``report_step``).
@PRUNERS.register("median")
def median(max_steps: int, **args) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(**args)


@PRUNERS.register("percentile")
def percentile(max_steps: int, **args) -> optuna.pruners.BasePruner:
    return optuna.pruners.PercentilePruner(**{"percentile": 25.0, **args})


@PRUNERS.register("successive_halving")
def successive_halving(max_steps: int, **args) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(**args)


@PRUNERS.register("hyperband")
def hyperband(max_steps: int, **args) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": max_steps, **args})


@PRUNERS.register("wilcoxon")
def wilcoxon(max_steps: int, **args) -> optuna.pruners.BasePruner:
    return optuna.pruners.WilcoxonPruner(**args)


@PRUNERS.register("none")
def no_pruning(max_steps: int, **args) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner(**args)


def reports_per_fold(pruner_type: str) -> bool:
    """Wilcoxon compares per-instance scores: one report per fold (its best F1), step = fold.
    Every other pruner sees every epoch, on one step axis: step = fold * max_epochs + epoch."""
    return pruner_type == "wilcoxon"


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
