"""Hyperparameter search with Optuna.

Modules: `search_space` (YAML entries -> suggestions -> config), `study` (sampler,
pruner, storage), `objective` (one trial = one pruned training run), `driver`
(`run_study`: workers, reports, best checkpoint), `reports` and `plots`
(`optuna-results/<study>/`), `progress` (console), `best_checkpoint`, `retrain`.
"""
