"""The worker loop in-process: OOM, seed trials, enqueue, storage retries."""

from __future__ import annotations

import os
import signal
import weakref
from contextlib import contextmanager

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from sqlalchemy.exc import OperationalError

from hpo import objective, study
from hpo.config import load_params_file, parse_spec
from hpo.errors import ConfigError
from hpo.run import run_study
from hpo.storage import HeldLock, retrying
from hpo.study import connect, enqueue
from hpo.workers import Worker, WorkerStopping, stopping
from hpo.workers.pool import plan_slots
from hpo.workers.stopping import raise_on_sigterm
from tests.conftest import tiny_study


def test_out_of_memory_is_pruned_and_the_worker_goes_on(image_root, tmp_path, monkeypatch):
    real_fit = objective.fit_fold
    calls = []

    def fit_or_oom(cfg, *args, **kwargs):
        calls.append(cfg.lr)
        if len(calls) == 1:
            torch.zeros(1)  # something allocated, then the classic failure
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(cfg, *args, **kwargs)

    monkeypatch.setattr(objective, "fit_fold", fit_or_oom)
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=2))
    result = run_study(spec, f"sqlite:///{tmp_path / 's.db'}", live=False)
    first, second = result.study.trials
    assert first.state == TrialState.PRUNED
    assert first.user_attrs["prune_reason"] == (
        "out of memory: backbone test_resnet, batch_size 16, image_size 16 on cpu")
    assert second.state == TrialState.COMPLETE  # the same worker carried on


def test_seed_trials_run_first_and_once(image_root, tmp_path):
    seeds = [{"lr": 0.005, "loss": "focal"}, {"lr": 0.002, "loss": "cross_entropy"}]
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=3, seed_trials=seeds))
    url = f"sqlite:///{tmp_path / 's.db'}"
    connect(spec, url)  # a second start must not enqueue them twice
    result = run_study(spec, url, live=False)
    params = [t.params for t in result.study.trials]
    assert params[:2] == seeds and len(params) == 3


@pytest.mark.parametrize(("seed", "message"), [
    ({"momentum": 0.9}, r"seed_trials\[0\]: unknown parameter\(s\) \['momentum'\]"),
    ({"lr": 5}, r"seed_trials\[0\]: lr=5 is outside its range \[0.001, 0.01\]"),
    ({"loss": "hinge"}, r"seed_trials\[0\]: loss='hinge' is not one of its choices \['cross_entropy', 'focal'\]"),
])
def test_seed_trials_outside_the_space_are_refused(image_root, tmp_path, seed, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(tiny_study(image_root, tmp_path, seed_trials=[seed]))


def test_enqueue_skips_duplicates(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path))
    handle = connect(spec, f"sqlite:///{tmp_path / 's.db'}")
    trials = [{"lr": 0.004, "loss": "focal"}, {"lr": 0.004, "loss": "focal"}, {"lr": 0.001, "loss": "focal"}]
    assert enqueue(handle, trials) == 2
    assert enqueue(handle, trials) == 0
    assert len(handle.study.trials) == 2
    with pytest.raises(ConfigError, match=r"trial 0: unknown parameter\(s\) \['momentum'\]; searched parameters: loss, lr"):
        enqueue(handle, [{"lr": 0.004, "momentum": 0.9}])
    with pytest.raises(ConfigError, match=r"trial 1: lr=50 is outside its range"):
        enqueue(handle, [{"lr": 0.004}, {"lr": 50}])
    assert len(handle.study.trials) == 2  # nothing of a refused file is enqueued


def test_a_configuration_enqueued_twice_under_a_lost_lock_runs_once(image_root, tmp_path, monkeypatch):
    """A database restart ends the lock's session while seeds (or `hpo enqueue`) are added: a
    rival process may look for the same parameters, find none, and add them too."""
    seed, other = {"lr": 0.005, "loss": "focal"}, {"lr": 0.002, "loss": "focal"}
    spec = parse_spec(tiny_study(image_root, tmp_path, seed_trials=[seed]))
    url = f"sqlite:///{tmp_path / 's.db'}"
    real_lock, calls = study.study_lock, []
    rival_adds = {0: seed, 2: other}  # in connect's block and enqueue's (1 and 3: their clean-ups)

    @contextmanager
    def lock(*args):
        calls.append(args)
        with real_lock(*args) as held:
            yield held
            if (params := rival_adds.get(len(calls) - 1)) is not None:
                rival = optuna.load_study(study_name=spec.name, storage=url)
                rival.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": params}))
                held.lost = True
                if len(calls) == 1:  # and a worker claims the first copy before the clean-up
                    rival._storage.set_trial_state_values(rival.trials[0]._trial_id, TrialState.RUNNING)

    monkeypatch.setattr(study, "study_lock", lock)
    handle = connect(spec, url)
    storage = handle.storage
    states = lambda: [(t.system_attrs.get("fixed_params"), t.state) for t in handle.study.get_trials()]  # noqa: E731
    assert states() == [(seed, TrialState.RUNNING), (seed, TrialState.FAIL)]
    assert handle.study.trials[1].user_attrs["fail_reason"] == "enqueued twice during a database restart"

    # Not copies: two workers' claims put back to the queue, a retry of a trial.
    for claim in [handle.study.ask(), handle.study.ask()]:
        storage.set_trial_state_values(claim._trial_id, TrialState.WAITING)
    handle.study.add_trial(create_trial(state=TrialState.WAITING,
                                        system_attrs={"fixed_params": seed, "failed_trial": 0}))
    assert enqueue(handle, [seed, other]) == 1
    assert states() == [(seed, TrialState.RUNNING), (seed, TrialState.FAIL), (None, TrialState.WAITING),
                        (None, TrialState.WAITING), (seed, TrialState.WAITING), (other, TrialState.WAITING),
                        (other, TrialState.FAIL)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost raise, printed
def test_a_sigterm_lost_in_a_finalizer_still_stops_the_worker(image_root, tmp_path, monkeypatch, request):
    """Python only prints what a finalizer or a weakref callback raises, so the SIGTERM
    handler's WorkerStopping is lost when the signal lands in one (seen in CI: a worker
    finished the whole budget after `hpo run` was stopped). The next epoch stops it."""
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=3, budget__patience=None))
    handle = connect(spec, f"sqlite:///{tmp_path / 's.db'}")
    previous = signal.getsignal(signal.SIGTERM)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, previous))
    monkeypatch.setattr(stopping, "_stop_requested", None)
    raise_on_sigterm()

    class Box:  # something a weakref can point to
        pass

    def sigterm_in_a_finalizer(event) -> None:
        if (event.result.fold, event.result.epoch) == (0, 0):
            weakref.finalize(Box(), os.kill, os.getpid(), signal.SIGTERM)  # runs at once: the box is gone
            assert stopping._stop_requested is WorkerStopping  # the handler ran; its raise was lost

    with pytest.raises(WorkerStopping):
        Worker(handle, budget=2, on_epoch=sigterm_in_a_finalizer).run()
    stopped, requeued = handle.study.get_trials()
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == "worker stopped"
    assert (stopped.user_attrs["progress"]["fold"], stopped.user_attrs["progress"]["epoch"]) == (0, 1)
    assert requeued.state == TrialState.WAITING and requeued.user_attrs["requeued_from"] == stopped.number


def test_params_file_is_one_mapping_or_a_list(tmp_path):
    one, many, bad = tmp_path / "one.yaml", tmp_path / "many.yaml", tmp_path / "bad.yaml"
    one.write_text("lr: 0.004\nloss: focal\n")
    many.write_text("- {lr: 0.004}\n- {lr: 0.001, loss: focal}\n")
    bad.write_text("- 0.004\n")
    assert load_params_file(one) == [{"lr": 0.004, "loss": "focal"}]
    assert load_params_file(many) == [{"lr": 0.004}, {"lr": 0.001, "loss": "focal"}]
    with pytest.raises(ConfigError, match="expected a mapping of parameter: value, or a list of them"):
        load_params_file(bad)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read .*; give a YAML mapping"):
        load_params_file(tmp_path / "missing.yaml")


def test_transient_storage_errors_are_retried():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return "ok"

    assert retrying(flaky, "test", seconds=10)() == "ok" and len(attempts) == 3


def test_other_storage_errors_are_not_retried():
    from sqlalchemy.exc import IntegrityError

    attempts = []

    def broken():
        attempts.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        retrying(broken, "test", seconds=10)()
    assert len(attempts) == 1


def test_a_bug_in_every_trial_stops_the_worker(image_root, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(objective, "fit_fold", broken)
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=20))
    with pytest.raises(ZeroDivisionError):
        run_study(spec, f"sqlite:///{tmp_path / 's.db'}", live=False)
    from hpo.status import load_existing

    trials = load_existing(spec, f"sqlite:///{tmp_path / 's.db'}").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 5
    assert all(t.user_attrs["fail_reason"] == "ZeroDivisionError: a bug" for t in trials)


def test_slots_spread_packed_workers_over_the_gpus_and_split_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    slots = plan_slots(None, ["0", "1"], trials_per_gpu=2)
    assert [(s.index, s.gpu, s.threads) for s in slots] == [(0, "0", 4), (1, "0", 4), (2, "1", 4), (3, "1", 4)]
    assert [s.gpu for s in plan_slots(3, ["0", "1"], 1)] == ["0", "1", "0"]  # more workers than GPUs: round robin
    assert [(s.gpu, s.threads) for s in plan_slots(4, [], 1)] == [(None, 4)] * 4  # no GPU: CPU workers
    assert [(s.gpu, s.threads) for s in plan_slots(None, [], 3)] == [(None, 16)]
    assert [s.gpu for s in plan_slots(None, None, 1)] == ["0", "1"]  # default: every visible GPU
    for wrong in (["2"], ["0", "abc"]):
        with pytest.raises(ConfigError, match=f"no CUDA device '{wrong[-1]}' here \\(this machine shows 2: 0, 1\\)"):
            plan_slots(None, wrong, 1)


@pytest.mark.parametrize("lost", [False, True])
def test_a_claim_made_under_a_lost_lock_goes_back_to_the_queue(image_root, tmp_path, monkeypatch, lost):
    """A database restart ends the lock's session: another worker may claim the last place of
    the budget at the same time. Seen when the lock is released, the claim goes back."""
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=1))
    handle = connect(spec, f"sqlite:///{tmp_path / 's.db'}")
    held = HeldLock(lost=lost)

    @contextmanager
    def lock():
        yield held

    ask = handle.study.ask
    rival = []

    def ask_after_a_rival():  # the other worker asks between our count and our ask
        rival.append(ask())
        return ask()

    monkeypatch.setattr(handle, "lock", lock)
    monkeypatch.setattr(handle.study, "ask", ask_after_a_rival)
    worker = Worker(handle, budget=1)
    claimed = worker._claim()
    first, second = handle.study.get_trials()
    assert first.number == rival[0].number and first.state == TrialState.RUNNING
    if lost:
        assert claimed == "wait" and second.state == TrialState.WAITING
        held.lost = False
        assert worker._claim() == "wait"  # the rival's trial holds the budget: nothing more is claimed
        assert len(handle.study.get_trials()) == 2
    else:  # a held lock rules the race out: nothing to check, nothing given back
        assert claimed.number == second.number and second.state == TrialState.RUNNING


def test_a_resumed_or_second_run_samples_new_configurations(image_root, tmp_path):
    """Each process that samples a study gets a sampler seed of its own: a resume (or a second
    `hpo run`) no longer replays the seeded sequence. One uninterrupted run stays reproducible."""
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=1))
    url = f"sqlite:///{tmp_path / 'resumed.db'}"
    run_study(spec, url, n_trials=1, live=False)
    resumed = run_study(spec, url, n_trials=2, live=False).study
    first, second = (t.params for t in resumed.trials)
    assert first["lr"] != second["lr"]
    assert resumed.user_attrs["sampler_sessions"] == 2
    at_once = run_study(spec, f"sqlite:///{tmp_path / 'at-once.db'}", n_trials=2, live=False).study
    assert at_once.trials[0].params == first  # the first session samples from the study's seed
    assert at_once.trials[1].params != second


def test_a_worker_waiting_on_a_lost_trial_says_what_it_waits_for(image_root, tmp_path):
    """A resume after a crash: the budget's last place is held by a trial whose worker is gone.
    The worker says what it waits for and when that trial is failed, instead of sitting silent."""
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=1,
                                 workers={"heartbeat_interval": 1, "grace_period": 30}))
    handle = connect(spec, f"sqlite:///{tmp_path / 's.db'}")
    orphan = handle.study.ask()
    orphan.set_user_attr("worker", "gone-box:99")
    handle.storage.record_heartbeat(orphan._trial_id)
    said = []
    ran = Worker(handle, budget=1, timeout=1.0, poll_seconds=0.2, on_wait=said.append).run()
    assert ran == 0 and len(said) == 1  # said once, not at every look
    assert said[0].startswith("waiting for trial 0 (gone-box:99, never heard from): they hold the budget's last places")
    assert "failed and retried once its heartbeat is 30 s old (workers.grace_period), within about 40 s" in said[0]
