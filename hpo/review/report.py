"""`hpo report`: one self-contained HTML page of a study's plots (optuna.visualization, plotly).

Each plot is a section with its own heading; a plot that cannot be drawn yet (importances need
several complete trials with varying parameters) says why instead of failing the report.
"""

from __future__ import annotations

import html
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go
from optuna.trial import TrialState

from hpo import keys
from hpo.files import write_whole
from hpo.review.html import section
from hpo.study import COUNTED, best_value, count_states

log = logging.getLogger(__name__)

# Section title -> plot. Adding a plot is one entry.
PLOTS: dict[str, Callable[[optuna.Study], go.Figure]] = {
    "Optimization history": vis.plot_optimization_history,
    "Parameter importances": vis.plot_param_importances,
    "Parallel coordinates": vis.plot_parallel_coordinate,
    "Slice plots": vis.plot_slice,
    "Intermediate values (per-epoch macro F1; pruned trials stop early)": vis.plot_intermediate_values,
    "Timeline": vis.plot_timeline,
}


def confusion_figure(trial: optuna.trial.FrozenTrial, classes: list[str] | None) -> go.Figure:
    matrix = trial.user_attrs[keys.CONFUSION_MATRIX]
    classes = classes or [str(i) for i in range(len(matrix))]  # studies from before classes were stored
    figure = go.Figure(go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Blues", text=matrix,
                                  texttemplate="%{text}", hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"))
    figure.update_layout(title=f"Trial {trial.number}: out-of-fold confusion matrix",
                         xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                         width=max(500, 40 * len(classes) + 250), height=max(450, 40 * len(classes) + 200))
    return figure


def report_html(study: optuna.Study, classes: list[str] | None) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = count_states(study, trials)
    best = best_value(study)
    summary = ", ".join(f"{s.name.lower()} {n}" for s, n in counts.items() if n)
    sections, first = [], True
    figures = dict(PLOTS)
    if best is not None and keys.CONFUSION_MATRIX in study.best_trial.user_attrs:
        figures["Best trial: confusion matrix"] = lambda s: confusion_figure(s.best_trial, classes)
    finished = sum(counts[s] for s in COUNTED)
    for title, plot in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental / few-trial notices: not the reader's concern
                figure = plot(study)
        except Exception as e:  # noqa: BLE001 - one plot's limits must not cost the report
            sections.append(section(title, f'<p class="skipped">not drawn: {html.escape(str(e))}</p>'))
            continue
        # plotly.js is embedded once, in the first figure: the file opens offline.
        sections.append(section(title, figure.to_html(full_html=False, include_plotlyjs=first)))
        first = False
    best_line = (f"best mean CV macro F1 <b>{best:.4f}</b> (trial {study.best_trial.number})"
                 if best is not None else "no complete trial yet")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hpo report: {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} .skipped{{color:#888}}</style>
</head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>{finished} finished trials ({summary}); {best_line}.</p>
{chr(10).join(sections)}
</body></html>
"""


def write_report(study: optuna.Study, classes: list[str] | None, path: Path) -> Path:
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        from hpo.errors import ConfigError

        raise ConfigError(f"study {study.study_name!r} has no complete trial yet; run it before reporting")
    return write_whole(path, report_html(study, classes))
