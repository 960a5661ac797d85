"""The live progress display of a run and its closing summary (rich)."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hpo.objective import EpochEvent

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    trials = study.get_trials(deepcopy=False)
    return {state: sum(t.state == state for t in trials) for state in TrialState}


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None


class RunDisplay:
    """Trials done/total, states, best macro F1, and the running trial's fold/epoch."""

    def __init__(self, study: optuna.Study, budget: int, console: Console, live: bool = True) -> None:
        self.study, self.budget, self.console = study, budget, console
        self.counts = count_states(study)
        self.best = best_value(study)
        self.event: EpochEvent | None = None
        self.started = time.monotonic()
        self.live = (
            Live(self._render(), console=console, refresh_per_second=4, transient=True) if live else None
        )

    def __enter__(self) -> RunDisplay:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def on_epoch(self, event: EpochEvent) -> None:
        self.event = event
        self._refresh()

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.counts = count_states(study)
        self.best = best_value(study)
        self.event = None
        if trial.state == TrialState.COMPLETE:
            outcome = f"macro F1 {trial.value:.4f} folds {trial.user_attrs.get('fold_f1')}"
        elif trial.state == TrialState.PRUNED:  # its value is only its last report: say why
            outcome = trial.user_attrs.get("prune_reason", "")
        else:
            outcome = (str(trial.system_attrs.get("fail_reason", "")).splitlines() or [""])[-1]
        self.console.print(
            f"trial {trial.number:>3} {trial.state.name:<8} {outcome}"
            f" ({trial.user_attrs.get('wall_seconds', 0):.0f}s) {trial.user_attrs.get('config', {}).get('backbone', '')}",
            soft_wrap=True,
            highlight=False,
        )
        self._refresh()

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Group:
        done = self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]
        best = f"{self.best:.4f}" if self.best is not None else "-"
        line = Text.assemble(
            ("trials ", "bold"),
            f"{done}/{self.budget}  ",
            ("complete ", "green"),
            f"{self.counts[TrialState.COMPLETE]}  ",
            ("pruned ", "yellow"),
            f"{self.counts[TrialState.PRUNED]}  ",
            ("failed ", "red"),
            f"{self.counts[TrialState.FAIL]}  ",
            ("best macro F1 ", "bold"),
            best,
            f"  elapsed {time.monotonic() - self.started:.0f}s",
        )
        if self.event is None:
            return Group(line)
        r = self.event.result
        running = Text(
            f"trial {self.event.trial}: fold {r.fold + 1}/{self.event.folds} epoch {r.epoch + 1}"
            f"  val F1 {r.macro_f1:.4f}  loss {r.train_loss:.3f}  {r.images_per_second:.0f} img/s"
        )
        return Group(line, running)


def summary_table(study: optuna.Study, last: int = 25) -> Table:
    """The latest ``last`` finished trials; the best one marked with *."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    best = best_value(study)
    table = Table(title=f"study {study.study_name}: {len(trials)} finished trials")
    for column in ("#", "state", "macro F1", "± std", "backbone", "loss", "optimizer", "lr",
                   "batch", "size", "seconds"):
        numeric = column in ("#", "macro F1", "± std", "lr", "batch", "size", "seconds")
        table.add_column(column, justify="right" if numeric else "left")
    for t in trials[-last:]:
        complete = t.state == TrialState.COMPLETE
        cfg = t.user_attrs.get("config", {})
        table.add_row(
            f"{t.number}{'*' if complete and t.value == best else ''}",
            t.state.name,
            f"{t.value:.4f}" if complete else "-",
            f"{t.user_attrs.get('f1_std', 0):.4f}" if complete else "",
            cfg.get("backbone", ""),
            cfg.get("loss", {}).get("name", ""),
            cfg.get("optimizer", {}).get("name", ""),
            f"{cfg['lr']:.2e}" if "lr" in cfg else "",
            str(cfg.get("batch_size", "")),
            str(cfg.get("image_size", "")),
            f"{t.user_attrs.get('wall_seconds', 0):.0f}",
        )
    return table
