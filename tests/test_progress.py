"""The live display of `hpo run`: what it shows while trials run."""

from __future__ import annotations

from optuna.trial import TrialState

from hpo.config import parse_spec
from hpo.progress import RunDisplay
from hpo.run import run_study
from tests.conftest import tiny_study


def test_the_display_counts_a_trial_running_from_its_claim_to_its_end(image_root, tmp_path, monkeypatch):
    shown = []  # (trials counted running, rows of running trials) at each refresh
    monkeypatch.setattr(RunDisplay, "_refresh",
                        lambda self: shown.append((self.counts[TrialState.RUNNING], dict(self.running))))
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=2, budget__max_epochs=2))
    run_study(spec, f"sqlite:///{tmp_path / 'study.db'}", live=False)
    starts = [i for i, (_, rows) in enumerate(shown) if "starting" in rows.values()]
    assert [shown[i][1] for i in starts] == [{0: "starting"}, {1: "starting"}]
    ends = [i for i, (_, rows) in enumerate(shown) if not rows]
    assert len(ends) == 2 and starts[0] < ends[0] < starts[1] < ends[1]
    for start, end in zip(starts, ends, strict=True):
        assert all(running == 1 for running, _ in shown[start:end]), shown  # not 0 until the trial ends
        assert all("epoch" in text for _, rows in shown[start + 1 : end] for text in rows.values())


def test_a_trial_its_worker_never_finished_shows_how_long_it_ran():
    import datetime

    from optuna.trial import create_trial

    from hpo.progress import trial_line

    start = datetime.datetime(2026, 12, 5, 10, 0, 0)
    lost = create_trial(state=TrialState.FAIL, user_attrs={"worker": "box:1"})
    lost.number = 4
    lost.datetime_start, lost.datetime_complete = start, start + datetime.timedelta(seconds=95)
    assert trial_line(lost) == "trial   4 FAIL     no heartbeat within the grace period (worker lost) (95s) "
