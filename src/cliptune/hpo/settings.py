"""Everything `optimize.py` decides about a study, as one dataclass (defaults: the CLI's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cliptune.errors import ConfigError
from cliptune.hpo.reports import PLOT_INTERVAL_S
from cliptune.hpo.study import METRICS, Heartbeat


@dataclass
class StudySettings:
    """How to run a study (what it tunes and at what fidelity is a `StudyPlan`)."""

    study_name: str = "clip-hpo"
    trials: int = 50  # trials this driver adds to the study
    max_trials: int | None = None  # total over all drivers (complete + pruned + running)
    storage: str | None = None  # None: optuna-results/<study>/study.journal
    artifact_store: str | None = None  # None: optuna-results/<study>/artifacts
    workers: int = 1
    timeout: float | None = None  # seconds, per driver
    sampler: str = "tpe"
    pruner: str = "hyperband"
    patience: int | None = None
    min_epochs: int = 1  # the pruner's first rung (Hyperband / SHA minimum resource)
    metric: str = "val_loss"
    results_dir: str = "optuna-results"
    allow_changes: bool = False  # continue a study whose fingerprint differs
    retrain_best: bool = False
    seeds: int = 3  # --retrain-best: seeds per configuration
    show_progress: bool = True
    plot_interval_s: float = PLOT_INTERVAL_S
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    seed: int | None = None  # this driver's sampler seed (None: the target's seed)
    # What the command line set of the study's definition: "metric", "search_space",
    # "target" / "fidelity" (a whole file) or "target.<key>" / "fidelity.<key>" (a flag).
    # A driver joining a study takes the rest from the study; None: everything is set.
    given: frozenset[str] | None = None

    def check(self) -> None:
        """Raise `ConfigError` naming the flag for an impossible value."""
        if self.trials < 0:
            raise ConfigError(f"--trials must be >= 0, got {self.trials}")
        if self.max_trials is not None and self.max_trials < 1:
            raise ConfigError(f"--max-trials must be at least 1, got {self.max_trials}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout must be positive seconds, got {self.timeout}")
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
