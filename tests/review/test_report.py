"""`hpo report`: a self-contained HTML page with the study's plots."""

from __future__ import annotations

import re

import optuna
import pytest

from hpo.errors import ConfigError
from hpo.review.report import PLOTS, write_report
from tests.conftest import CLASSES


def test_report_holds_every_plot_and_the_best_confusion_matrix(finished_study, tmp_path):
    study = optuna.load_study(study_name="tiny", storage=finished_study.url)
    path = write_report(study, list(CLASSES), tmp_path / "out" / "report.html")
    page = path.read_text()
    assert not (tmp_path / "out" / "report.html.partial").exists()
    titles = [*PLOTS, "Best trial: confusion matrix"]
    for title in titles:
        assert f"<h2>{title}</h2>" in page
    # Every section drew its figure (nothing skipped) and plotly.js is embedded once: offline.
    assert 'class="skipped"' not in page
    assert len(re.findall(r'class="plotly-graph-div"', page)) == len(titles)
    assert page.count("plotly.js v") == 1 and "<script src=" not in page
    assert f"best mean CV macro F1 <b>{study.best_value:.4f}</b> (trial {study.best_trial.number})" in page
    matrix = study.best_trial.user_attrs["confusion_matrix"]
    assert f'"z":{matrix}'.replace(" ", "") in page.replace(" ", "")


def test_report_of_a_study_without_results_is_refused(tmp_path):
    study = optuna.create_study(study_name="empty")
    with pytest.raises(ConfigError, match="no complete trial yet"):
        write_report(study, None, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
