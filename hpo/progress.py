"""The live progress display of a run and its closing summary (rich).

In-process runs feed it callbacks (every epoch, every finished trial); a pool of worker
processes feeds it by polling the study, where workers leave each trial's progress.
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hpo import keys
from hpo.objective import EpochEvent
from hpo.study import best_value, count_states

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def trial_line(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        outcome = f"macro F1 {trial.value:.4f} folds {trial.user_attrs.get('fold_f1')}"
    elif trial.state == TrialState.PRUNED:  # its value is only its last report: say why
        outcome = trial.user_attrs.get(keys.PRUNE_REASON, "")
    else:
        outcome = trial.user_attrs.get(keys.FAIL_REASON, "no heartbeat within the grace period (worker lost)")
    seconds = trial.user_attrs.get(keys.WALL_SECONDS)
    if seconds is None:  # a trial its worker never finished (lost, stopped): start to end
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else 0
    backbone = trial.user_attrs.get(keys.CONFIG, {}).get("backbone", "")
    return f"trial {trial.number:>3} {trial.state.name:<8} {outcome} ({seconds:.0f}s) {backbone}"


def waiting(data_wait: float) -> str:
    """A note when the training waited for its batches for a tenth of the epoch or more: the
    loader (augmentation on too few cores, or in the training process on a CPU) holds it back."""
    return f" ({data_wait:.0%} waiting for data)" if data_wait >= 0.1 else ""


class RunDisplay:
    """Trials done/total, states, best macro F1, and what the running trials are doing."""

    def __init__(self, study: optuna.Study, budget: int, console: Console, live: bool = True) -> None:
        self.study, self.budget, self.console = study, budget, console
        self.counts = count_states(study)
        self.best = best_value(study)
        self.running: dict[int, str] = {}
        self.printed = {t.number for t in study.get_trials(deepcopy=False) if t.state in FINISHED}
        self.started = time.monotonic()
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=True) if live else None

    def __enter__(self) -> RunDisplay:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def on_trial_start(self, number: int) -> None:
        self.running[number] = "starting"
        self.counts = count_states(self.study)
        self._refresh()

    def on_epoch(self, event: EpochEvent) -> None:
        r = event.result
        self.running[event.trial] = (
            f"fold {r.fold + 1}/{event.folds} epoch {r.epoch + 1}  val F1 {r.macro_f1:.4f}"
            f"  loss {r.train_loss:.3f}  {r.images_per_second:.0f} img/s{waiting(r.data_wait)}"
        )
        self._refresh()

    def on_trial_end(self, trial: FrozenTrial) -> None:
        self.running.pop(trial.number, None)
        self.counts = count_states(self.study)
        self.best = best_value(self.study)
        self._print(trial)
        self._refresh()

    def poll(self) -> None:
        """Catch up from the storage: trials finished by other processes, running ones' progress."""
        trials = self.study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state in FINISHED and trial.number not in self.printed:
                self._print(trial)
        self.running = {
            t.number: self._progress_text(t) for t in trials if t.state == TrialState.RUNNING
        }
        self.counts = count_states(self.study, trials)
        self.best = best_value(self.study)
        self._refresh()

    def _progress_text(self, trial: FrozenTrial) -> str:
        p = trial.user_attrs.get(keys.PROGRESS)
        where = f"fold {p['fold'] + 1} epoch {p['epoch'] + 1}  val F1 {p['f1']:.4f}" if p else "starting"
        return f"{where}  [{trial.user_attrs.get('worker', '?')}]"

    def _print(self, trial: FrozenTrial) -> None:
        self.printed.add(trial.number)
        self.console.print(trial_line(trial), soft_wrap=True, highlight=False, markup=False)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Group:
        done = self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]
        best = f"{self.best:.4f}" if self.best is not None else "-"
        line = Text.assemble(
            ("trials ", "bold"), f"{done}/{self.budget}  ",
            ("complete ", "green"), f"{self.counts[TrialState.COMPLETE]}  ",
            ("pruned ", "yellow"), f"{self.counts[TrialState.PRUNED]}  ",
            ("failed ", "red"), f"{self.counts[TrialState.FAIL]}  ",
            ("running ", "cyan"), f"{self.counts[TrialState.RUNNING]}  ",
            ("best macro F1 ", "bold"), best,
            f"  elapsed {time.monotonic() - self.started:.0f}s",
        )
        rows = [Text(f"trial {n}: {text}") for n, text in sorted(self.running.items())]
        return Group(line, *rows)


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
        cfg = t.user_attrs.get(keys.CONFIG, {})
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
