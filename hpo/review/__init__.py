"""Reviewing studies: per-trial artifacts for optuna-dashboard, the study note, the HTML report."""
