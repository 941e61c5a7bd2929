"""Scoring and showing: metrics (the paper's formulas and the standard ones), scoring of runs,
tables, statistics and figures."""
