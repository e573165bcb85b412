"""The report of a study, one room: what a study shows of itself.

`files` (every file of `optuna-results/<study>/`, report.md's text, `StudyReporter`),
`plots` (optuna.visualization as HTML and PNG), `importances` (PED-ANOVA that says
what it rests on) and `progress` (the console: a line per trial, a progress bar).
"""
