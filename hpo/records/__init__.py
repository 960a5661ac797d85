"""What a trial leaves for review as it ends: its artifacts (confusion matrix, per-class table,
learning curves, out-of-fold predictions) in the study's artifact store, and the notes
optuna-dashboard shows. Written by the objective; read by review, export and the ensemble."""
