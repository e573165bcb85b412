"""Hyperparameter search with Optuna, one module per concept.

`search_space` (its YAML file, suggestions -> config, the baseline trial), `definition`
(`StudyDefinition`: what a study is, made once and read by every stage; the study
file, the fingerprint, the data decision, and the driver's `StudySettings`), `study`
(sampler, pruner, storage), `design` (TPE's start-up, `--pruner auto`), `warm_start`
(earlier studies' best trials enqueued), `objective` (one trial = one pruned training run),
`time_limit` (what a trial costs at full fidelity), `owners` (who runs a trial,
liveness), `workers` (trial loop, worker processes), `driver` (`run_study`), `results`
(ranking and the best checkpoint), `retrain` (best vs base config at full fidelity,
several seeds), `fidelity_check`, `verdict` (report.md's first words), and `report/`:
the files of `optuna-results/<study>/`, the plots, the importances and the console
progress.
"""
