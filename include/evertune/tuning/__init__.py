"""Continuous tuning: dataset, drift, training, evaluation, gate and registry."""
