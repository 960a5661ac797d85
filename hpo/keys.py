"""The names under which hpo keeps what it knows in an Optuna study (its user attributes).

One place: workers write them, and the display, `hpo status`, export, review and the ensemble read
them back, from any machine. Changing a value orphans what earlier studies stored under it.
"""

from __future__ import annotations

# Study attributes, set once when the study is created (FOLD_PLAN last: its presence marks a
# complete setup), and the ones runs update.
FOLD_PLAN, DATA_FINGERPRINT, CV, SPEC, CLASSES = "fold_plan", "data_fingerprint", "cv", "spec", "classes"
SAMPLER_SESSIONS = "sampler_sessions"  # how many processes have sampled the study's trials
BUDGET = "budget"  # the budget the last run ran to (--n-trials)
WORKER_PREFIX = "worker:"  # + a worker's name: {last_seen, device, trial, cuda_visible_devices, finished}
KEPT_MODELS = "kept_models"  # trials whose fold models are kept, best first

# Trial attributes.
CONFIG = "config"  # the full TrainConfig as a dict
DEVICE = "device"
WORKER = "worker"  # host:pid of the worker running it
PROGRESS = "progress"  # {fold, epoch, f1} of the last epoch
WALL_SECONDS = "wall_seconds"
FOLD_F1, F1_STD, BEST_EPOCHS = "fold_f1", "f1_std", "best_epochs"
FINISHED_FOLDS = "finished_folds"  # best F1 of each fold finished so far (set after each fold; the fold rungs read it)
PER_CLASS_F1, CONFUSION_MATRIX = "per_class_f1", "confusion_matrix"
IMAGES_PER_SECOND, DATA_WAIT = "images_per_second", "data_wait"
ARTIFACTS = "artifacts"  # figure/table name -> artifact id
OOF = "oof"  # the artifact id of its out-of-fold probabilities
PRUNE_REASON, FAIL_REASON = "prune_reason", "fail_reason"
REQUEUED_FROM = "requeued_from"  # the trial number a stopped worker's trial was re-enqueued from
