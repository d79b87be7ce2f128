"""Evaluation: sample-quality metrics, exact predictors (oracles), likelihood bounds."""
