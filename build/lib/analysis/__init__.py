"""Figures, tables, statistics and the HTML report of a study, read from its MLflow runs."""
