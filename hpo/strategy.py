"""Optuna samplers and pruners by name, one registry entry each, and the reporting scheme."""

from __future__ import annotations

import optuna

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
