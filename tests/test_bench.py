"""The benchmark scripts still run against the package (tiny sizes, CPU): their figures are
measured on other machines, but an API change must not leave them broken until then."""

from __future__ import annotations

import os
import re
import runpy
import sys
from pathlib import Path

import optuna
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch, tmp_path, capsys):
    """Run bench/NAME.py as a script with ``args``; returns what it printed."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put bench/ first
    monkeypatch.setenv("HPO_CACHE", str(tmp_path / "cache"))  # the scripts set it for their run
    verbosity = optuna.logging.get_verbosity()

    def run(name: str, *args: str) -> str:
        monkeypatch.setattr(sys, "argv", [name, *args, "--data", str(tmp_path / "photos")])
        before = patch_points()
        runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")
        assert patch_points() == before, f"bench/{name}.py left hpo patched for the tests after it"
        return capsys.readouterr().out

    yield run
    optuna.logging.set_verbosity(verbosity)


def patch_points() -> dict[str, object]:
    """What the bench scripts' experiments replace (on a GPU run, for the rest of their process)."""
    from hpo.data import loader, prefetch
    from hpo.train import loop, optim

    return {"fused": optim.fused, "wait": prefetch._wait, "page_lock": loader.page_lock,
            "seed_worker": loader._seed_worker, "train": loop._Epochs.train}


def figure(pattern: str, out: str) -> float:
    found = re.search(pattern, out)
    assert found, f"no {pattern!r} in:\n{out}"
    return float(found.group(1))


def test_throughput_prints_the_trial_against_the_model(bench, monkeypatch):
    monkeypatch.setenv("HPO_COMPILE_BACKEND", "aot_eager")  # compiled as on a GPU, without generating code
    out = bench("throughput", "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "8",
                "--images", "48", "--epochs", "2", "--steps", "2", "--compile", "default")
    assert figure(r"\(a\) model alone: ([\d.]+) images/s", out) > 0
    assert figure(r"\(b\) hpo trial: +([\d.]+) images/s", out) > 0
    assert figure(r"ratio \(b\)/\(a\): +([\d.]+)", out) > 0
    assert figure(r"first epoch ([\d.]+) s", out) > 0


def test_throughput_times_a_compile_from_empty_caches_first(bench, monkeypatch):
    monkeypatch.setenv("HPO_COMPILE_BACKEND", "aot_eager")
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # the script sets them: restored after
        monkeypatch.delenv(name, raising=False)
    out = bench("throughput", "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "8",
                "--images", "48", "--epochs", "2", "--steps", "2", "--compile", "default", "--cold-compile")
    fresh = re.search(r"a cold compile \(default\), caches in (\S+):", out).group(1)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(fresh)
    cold = out.index("(b) cold:")
    assert out.index("first epoch") < cold < out.index("(a) model alone")  # timed before anything else compiled
    assert figure(r"\(b\) cold: +([\d.]+) images/s", out) > 0


def test_naive_vs_hpo_runs_both_searches(bench):
    out = bench("naive_vs_hpo", "--trials", "2", "--epochs", "1", "--folds", "2", "--per-class", "6",
                "--image-size", "16", "--equal-time")
    assert "hpo run:" in out and figure(r"best macro F1 ([\d.]+)", out) >= 0
    assert figure(r"common way: \d+ s, 2 trials complete, best macro F1 ([\d.]+)", out) >= 0
    assert figure(r"speed-up: x([\d.]+)", out) > 0
    # resumed for the rest of the common way's time, if any: the first run's 2 trials and more
    equal = re.search(r"common way's time: \d+ s, (\d+) complete \+ (\d+) pruned", out)
    if equal is None:  # at this size hpo's start (the cache, the storage) may outweigh 2 tiny trials
        assert "none left, hpo took longer" in out
        assert figure(r"hpo run: +(\d+) s", out) >= figure(r"common way: (\d+) s,", out)
    else:
        assert int(equal.group(1)) + int(equal.group(2)) > 2


def test_hpos_epoch_loop_adds_a_few_ops_to_the_models_step(bench):
    """On a GPU most aten ops are a launch the host pays for: a per-step .item() (a host sync), a
    copy of the parameters or a metric computed per batch would show here as more ops per step."""
    out = bench("step_ops", "--backbone", "test_resnet", "--image-size", "16")
    assert figure(r"model alone: (\d+) aten ops per step", out) > 50
    assert figure(r"([\d.]+) more", out) <= 20
    reads = re.search(r"aten._local_scalar_dense ([\d.]+)", out)  # the loss, once an epoch of 16 steps
    assert reads is None or float(reads.group(1)) <= 1 / 16


def test_time_to_quality_charts_both_ways_on_held_out_people(bench, tmp_path):
    """One common way, then one hpo run for each --floor-after value, each in its own folder."""
    out = bench("time_to_quality", "--work", str(tmp_path / "work"), "--study-people", "40", "--held-out", "3",
                "--trials", "2", "--epochs", "1", "--folds", "2", "--image-size", "16", "--hpo-seconds", "3",
                "--floor", "0", "--floor-after", "0", "0.5")  # one epoch at 16 px learns nothing: no floor
    naive = [float(f) for f in re.findall(r"common way: trial \d+ at \d+ s, val F1 [\d.]+, held-out ([\d.]+)", out)]
    assert naive, out
    assert figure(r"common way +([\d.]+)", out) == naive[-1]  # its submission: the last new best
    parts = re.split(r"\nhpo \(floor_after ([\d.]+)\)\n", out)
    assert parts[1::2] == ["0", "0.5"], out
    for value, run in zip(parts[1::2], parts[2::2], strict=True):
        ours = re.findall(r"hpo: (\d+) complete at (\d+) s, ensemble .*, held-out ([\d.]+)", run.split("\n\n")[0])
        assert ours, out
        assert all(0 <= float(f) <= 1 for *_, f in ours)
        assert [int(n) for n, *_ in ours] == sorted(int(n) for n, *_ in ours)  # points in the order trials completed
        assert figure(rf"\nhpo \(floor_after {value}\) +([\d.]+)", out) == float(ours[-1][2])
        assert re.search(rf"hpo \(floor_after {value}\) / common way = [\d.]+|hpo \(floor_after {value}\) did not", out)
        # the last point's ensemble was really predicted: one row per held-out photo (3 people x 7)
        submission = tmp_path / "work" / f"floor-after-{value}" / "submission.csv"
        assert len(submission.read_text().splitlines()) == 1 + 3 * 7


def test_ensemble_flows_and_the_rig_score_the_same_models_on_held_out_people(bench, tmp_path):
    """The flows print the ensemble's held-out F1, where it comes from, and its score on the study's
    people held out of every fold (cv.holdout); the rig dumps every kept trial's out-of-fold and
    held-out probabilities, which reproduce both F1s with the ensemble's weights."""
    import numpy as np
    import yaml

    from hpo.ensemble.selection import macro_f1

    work = str(tmp_path / "work")
    out = bench("ensemble_flows", "--work", work, "--study-people", "12", "--held-out", "3", "--trials", "3",
                "--epochs", "1", "--folds", "2", "--image-size", "16", "--keep", "3", "--holdout", "0.25")
    ensemble_f1 = figure(r"\(c\) ensemble +([\d.]+)", out)
    assert figure(r"every fold, flipped views too +([\d.]+)", out) == ensemble_f1
    rig_out = bench("ensemble_rig", "--work", work)
    rig = np.load(tmp_path / "work" / "rig.npz")
    study = optuna.load_study(study_name="people", storage=f"sqlite:///{tmp_path / 'work' / 'people.db'}")
    complete = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert list(rig["trials"]) == complete  # keep 3: every complete trial's fold models
    assert rig["oof"].shape == (len(complete), 12 * 7, 18) and rig["held"].shape == (len(complete), 2, 2, 3 * 7, 18)
    assert np.allclose(rig["held"].sum(-1), 1, atol=1e-3) and set(np.unique(rig["folds"])) == {-1, 0, 1}
    study_rows = rig["folds"] == -1  # 3 of the 12 study people, 7 photos each
    assert study_rows.sum() == 21 and rig["study_held"].shape == (len(complete), 2, 2, 21, 18)
    ensemble = yaml.safe_load((tmp_path / "work" / "ensemble.yaml").read_text())
    index = {int(t): i for i, t in enumerate(rig["trials"])}
    weighted = sum(m["weight"] * rig["held"][index[m["trial"]]].mean((0, 1)) for m in ensemble["members"])
    assert round(macro_f1(rig["truth"], weighted.argmax(1), 18), 4) == ensemble_f1
    estimate, spread, total = (figure(r"\(c\) ensemble +[\d.]+ +[\d.]+ +" + r"[\d.]+ +" * n + r"([\d.]+)", out)
                               for n in range(3))
    gain = figure(r"averaging folds and views adds there \(([+-][\d.]+)\)", out)
    assert spread > 0 and total == pytest.approx(figure(r"\(c\) ensemble +[\d.]+ +([\d.]+)", out) + gain, abs=2e-4)
    on_study = sum(m["weight"] * rig["study_held"][index[m["trial"]]].mean((0, 1)) for m in ensemble["members"])
    assert round(macro_f1(rig["labels"][study_rows], on_study.argmax(1), 18), 4) == estimate
    assert figure(r"cv.holdout estimate \(3 people\): ([\d.]+) ± [\d.]+", rig_out) == estimate
    assert figure(r"on the held-out people: ([\d.]+)", rig_out) == ensemble_f1
