"""Hyperparameter search with Optuna.

Modules: `fidelity` (the study file: target experiment + the trials' fidelity),
`search_space` (YAML entries -> suggestions -> config), `baseline` (the target as
trial 0), `fingerprint` (what a study was created with), `study` (sampler, pruner,
storage), `objective` (one trial = one pruned training run), `owners` (who runs a
trial, liveness), `workers` (trial loop, worker processes), `driver` (`run_study`),
`settings`, `reports` (every file of the report, report.md's text), `importances` and `plots`
(`optuna-results/<study>/`), `progress` (console), `best_checkpoint`, `retrain`
(best vs base config at full fidelity, several seeds).
"""
