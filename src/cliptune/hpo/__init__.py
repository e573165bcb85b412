"""Hyperparameter search with Optuna, one module per concept.

`search_space` (its YAML file, suggestions -> config, the baseline trial), `definition`
(the study file, fidelity, fingerprint, data decision and the driver's settings),
`study` (sampler, pruner, storage), `design` (TPE's start-up, `--pruner auto`),
`warm_start` (earlier studies' best trials enqueued), `objective` (one trial = one pruned training run),
`time_limit` (what a trial costs at full fidelity), `owners` (who runs a trial,
liveness), `workers` (trial loop, worker processes), `driver` (`run_study`), `results`
(ranking and the best checkpoint), `retrain` (best vs base config at full fidelity,
several seeds), `fidelity_check`, and the report: `reports` (every file of
`optuna-results/<study>/`, report.md's text), `verdict` (its first words), `plots`,
`importances`, `progress` (console).
"""
