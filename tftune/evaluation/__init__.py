"""Scoring a finished run: metrics, the evaluation report and plots."""
