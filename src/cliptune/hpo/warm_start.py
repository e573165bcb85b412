"""Warm starts: a study's first trials take the best configurations of earlier studies.

`--warm-start STUDY[,STUDY]` names the sources: `NAME`, a study in this study's storage
(the same --storage, or by default `optuna-results/NAME/study.journal` in the same
--results-dir), or `NAME@STORAGE` for a study elsewhere (a journal file or a database
URL). From each source the `--warm-start-top K` best complete trials (default 1; ranked
as the source ranks its own best, `results.ranked`) are enqueued after the baseline and
before the sampler's own trials. This is the way to carry what a small or CPU study
found to the full data or the GPU, or to start from settings a person trusts.

A parameter that does not fit this study's space (not in it, setting other config keys
here than there, or a value outside its range or choices) is dropped with a note; the
sampler draws the parameters a source leaves open. Each enqueued trial carries its
provenance (`warm_start`: `<study>#<trial> (<storage>)`) and the notes
(`warm_start_notes`) as user attributes, so the report lists them. A source trial is
enqueued once: a continued study with the same --warm-start finds its provenance, and
parameters equal to an existing trial's (often the baseline's) are not enqueued again.

Every source is read before the study is created or changed: an unknown study or
storage is an error naming --warm-start, and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from cliptune.errors import ConfigError
from cliptune.hpo.definition import SPACE_ATTR, StudySettings
from cliptune.hpo.results import ranked
from cliptune.hpo.search_space import SearchSpace, describe
from cliptune.hpo.study import default_journal_path, is_rdb_url, make_storage, storage_display

WARM_ATTR = "warm_start"  # trial attribute: where its parameters come from
WARM_NOTES_ATTR = "warm_start_notes"  # trial attribute: the parameters dropped, in words


@dataclass(frozen=True)
class WarmStart:
    """One configuration to enqueue: the parameters that fit, their source, the drops."""

    params: dict[str, Any]
    provenance: str  # "<study>#<trial> (<storage>)"
    notes: tuple[str, ...] = ()  # one per dropped parameter


def parse_warm_start(spec: str | None) -> tuple[str, ...]:
    """The sources of `--warm-start A,B@STORAGE` (empty for None)."""
    if spec is None:
        return ()
    items = tuple(item.strip() for item in spec.split(","))
    if not all(items):
        raise ConfigError(f"--warm-start {spec!r}: give study names separated by commas, "
                          "each NAME or NAME@STORAGE")
    return items


def source_location(item: str, settings: StudySettings) -> tuple[str, str]:
    """(study name, storage) of one --warm-start item: `NAME@STORAGE`, or `NAME` in this
    study's storage (its journal under --results-dir when it has no --storage)."""
    name, at, storage = item.partition("@")  # a URL's own @ comes after the first
    if not name or (at and not storage):
        raise ConfigError(f"--warm-start {item}: expected NAME or NAME@STORAGE (a journal "
                          "file or a database URL)")
    if not at:
        storage = settings.storage or str(default_journal_path(settings.results_dir, name))
    if name == settings.study_name and storage == (settings.storage or str(
            default_journal_path(settings.results_dir, settings.study_name))):
        raise ConfigError(f"--warm-start {item}: that is this study itself; name an earlier "
                          "study")
    return name, storage


def load_source(item: str, settings: StudySettings) -> tuple[optuna.Study, str]:
    """The source study of one --warm-start item and its storage label; `ConfigError`
    naming --warm-start when the storage or the study does not exist (nothing created)."""
    name, storage = source_location(item, settings)
    if not is_rdb_url(storage) and not Path(storage).is_file():
        raise ConfigError(f"--warm-start {item}: no study journal at {storage}; give "
                          "NAME@STORAGE (a journal file or a database URL) for a study kept "
                          f"elsewhere, or check the name (--results-dir {settings.results_dir})")
    try:
        opened = make_storage(storage, settings.results_dir, name, settings.heartbeat)
    except ConfigError as err:  # a database that cannot be opened: say which flag named it
        raise ConfigError(f"--warm-start {item}: {err}") from None
    try:
        return optuna.load_study(study_name=name, storage=opened), storage_display(storage)
    except KeyError:
        names = optuna.get_all_study_names(opened)
        raise ConfigError(f"--warm-start {item}: {storage_display(storage)} holds no study "
                          f"{name!r} (it holds: {', '.join(names) or 'none'})") from None


def fit_to_space(params: dict[str, Any], space: SearchSpace,
                 source_space: dict | None = None) -> tuple[dict[str, Any], list[str]]:
    """The parameters that fit `space`, and a note per dropped one. `source_space`: the
    source study's recorded space (`space_to_dict`), to drop a parameter of the same name
    that sets other config keys there."""
    by_name = {p.name: (p, line) for p, line in zip(space.parameters, describe(space),
                                                    strict=True)}
    recorded = (source_space or {}).get("parameters", {})
    kept, notes = {}, []
    for name, value in params.items():
        if name not in by_name:
            notes.append(f"{name} = {value!r}: not in this study's search space")
            continue
        parameter, line = by_name[name]
        there = recorded.get(name, {}).get("target")
        if there is not None and tuple(there) != parameter.targets:
            notes.append(f"{name}: sets {', '.join(there)} there, "
                         f"{', '.join(parameter.targets)} here")
        elif not parameter.contains(value):
            notes.append(f"{name} = {value!r}: outside this study's space ({line})")
        else:
            kept[name] = {"int": int, "float": float}.get(parameter.kind, lambda v: v)(value)
    return kept, notes


def read_warm_starts(settings: StudySettings, space: SearchSpace) -> list[WarmStart]:
    """The configurations `settings.warm_start` names, fitted to `space`: the
    `settings.warm_start_top` best complete trials of each source."""
    starts = []
    for item in settings.warm_start:
        source, label = load_source(item, settings)
        best = ranked(source)[:settings.warm_start_top]
        if not best:
            raise ConfigError(f"--warm-start {item}: study {source.study_name!r} has no "
                              "complete trial to start from")
        for trial in best:
            params, notes = fit_to_space(trial.params, space, source.user_attrs.get(SPACE_ATTR))
            starts.append(WarmStart(params, f"{source.study_name}#{trial.number} ({label})",
                                    tuple(notes)))
    return starts


def enqueue_warm_starts(study: optuna.Study, starts: list[WarmStart]) -> list[str]:
    """Enqueue each warm start not already in `study`; returns what happened, in words
    (a line per enqueued or skipped start and per dropped parameter)."""
    def holder(provenance: str) -> int | None:
        return next((t.number for t in study.get_trials(deepcopy=False)
                     if t.user_attrs.get(WARM_ATTR) == provenance), None)

    lines = []
    for start in starts:
        number = holder(start.provenance)
        if number is not None:
            lines.append(f"warm start {start.provenance}: already trial {number} of this study")
            continue
        if not start.params:
            lines.append(f"warm start {start.provenance}: none of its parameters fits this "
                         "study's space; not enqueued")
        else:
            study.enqueue_trial(start.params, user_attrs={
                WARM_ATTR: start.provenance, WARM_NOTES_ATTR: list(start.notes)},
                skip_if_exists=True)
            number = holder(start.provenance)
            lines.append(f"warm start {start.provenance}: " + (
                f"enqueued as trial {number}" if number is not None else
                "the study already has a trial with these parameters; not enqueued"))
        lines += [f"warm start {start.provenance}: dropped {note}" for note in start.notes]
    return lines


def warm_start_section(study: optuna.Study, metric: str) -> list[str]:
    """report.md's list of the warm-started trials: provenance, outcome, dropped
    parameters (empty when there are none)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(WARM_ATTR)]
    if not trials:
        return []
    out = ["", "## Warm starts", "",
           "Trials enqueued with the best configurations of earlier studies (--warm-start); "
           "the sampler drew the parameters a source left open.", "",
           f"| trial | from | state | {metric} | dropped parameters |", "|---|---|---|---|---|"]
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        dropped = "; ".join(t.user_attrs.get(WARM_NOTES_ATTR, [])) or "none"
        out.append(f"| {t.number} | {t.user_attrs[WARM_ATTR]} | {t.state.name.lower()} | "
                   f"{value} | {dropped} |")
    return out
