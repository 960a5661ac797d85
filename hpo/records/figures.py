"""Pictures and tables of one trial's results (matplotlib, off-screen)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_fscore_support  # noqa: E402

from hpo.train.results import EpochResult  # noqa: E402


def confusion_png(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """The out-of-fold confusion matrix, counts in cells, rows = true class."""
    size = max(5.0, 0.45 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation="vertical", values_format="d"
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves_png(histories: Sequence[Sequence[EpochResult]], path: Path, title: str,
               stopped_early: Sequence[int | None] = ()) -> Path:
    """Per fold: train and validation loss, validation macro F1, and learning rate by epoch.
    Epochs trained with a frozen backbone are shaded; a fold that its patience stopped
    (``stopped_early``: the epoch, per fold) ends in an x."""
    fig, (loss_ax, f1_ax, lr_ax) = plt.subplots(1, 3, figsize=(14, 4))
    frozen = max((e.epoch + 1 for history in histories for e in history if e.frozen), default=0)
    for ax in (loss_ax, f1_ax, lr_ax) if frozen else ():
        ax.axvspan(-0.5, frozen - 0.5, color="0.9", label="backbone frozen")
    stops = dict(enumerate(stopped_early))
    for index, history in enumerate(histories):
        if not history:
            continue
        fold = history[0].fold
        epochs = [e.epoch for e in history]
        line = loss_ax.plot(epochs, [e.train_loss for e in history], label=f"fold {fold} train")[0]
        loss_ax.plot(epochs, [e.val_loss for e in history], "--", color=line.get_color(), label=f"fold {fold} val")
        f1_line = f1_ax.plot(epochs, [e.macro_f1 for e in history], marker="o", label=f"fold {fold}")[0]
        lr_ax.plot(epochs, [e.lr for e in history], label=f"fold {fold}")
        if stops.get(index) is not None:
            f1_ax.plot([history[-1].epoch], [history[-1].macro_f1], "x", markersize=12, mew=2,
                       color=f1_line.get_color(), label=f"fold {fold}: early stop")
    for ax, name in ((loss_ax, "loss"), (f1_ax, "val macro F1"), (lr_ax, "learning rate")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
    f1_ax.legend(fontsize=8)
    loss_ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def per_class_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> list[dict[str, object]]:
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return [
        {"class": name, "precision": round(float(p), 4), "recall": round(float(r), 4),
         "f1": round(float(f), 4), "support": int(n)}
        for name, p, r, f, n in zip(classes, precision, recall, f1, support, strict=True)
    ]


def rows_csv(rows: list[dict[str, object]], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path
