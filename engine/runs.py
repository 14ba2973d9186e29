"""Runs side by side: the summaries `train --json` writes, read back, and what differs between them.

    runs = [load_run(p) for p in ("sgd.json", "adam.json")]
    labels = run_labels(runs)          # ["optimizer=sgd, lr=0.01", "optimizer=adam, lr=0.001"]

A run's configuration is the "config" its summary records (what defines the run, as the
checkpoint keeps it: model, model options, data, optimizer and its settings, lr, schedule,
batch size, augmentation, seed ...), flattened to one level; a summary written before
"config" existed gives the same from its top-level entries. A run is labelled by the
settings in which the runs differ, so a figure of an optimizer sweep says "optimizer=sgd",
one of a learning-rate sweep "lr=0.1".
"""
from __future__ import annotations

import json
import os

__all__ = ["load_run", "run_config", "differences", "run_labels"]

# what an older summary (no "config") says about its run, at its top level
_OLD_KEYS = ("model", "model_options", "data", "optimizer", "optimizer_settings", "lr", "schedule",
             "batch_size", "augment", "val_split", "seed")


def load_run(path, what: str = "compare") -> dict:
    """The summary at path (train --json), checked to hold a run's history; `what` names the
    command in errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no run file {path}" + (" (it is a directory)" if os.path.isdir(path) else ""))
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: {path} is not JSON ({e}); expected the summary of train --json") from e
    history = run.get("history") if isinstance(run, dict) else None
    if not isinstance(history, dict) or not isinstance(history.get("loss"), list):
        found = sorted(run)[:8] if isinstance(run, dict) else type(run).__name__
        raise ValueError(f"{what}: {path} is not a run summary of train --json (no history of losses per epoch; "
                         f"it holds {found})")
    if not history["loss"]:
        raise ValueError(f"{what}: {path} records no finished epoch (its history is empty)")
    return run


def run_config(run: dict) -> dict:
    """What defines the run, one level deep: {"model": "lenet", "dropout": 0.3, "optimizer":
    "sgd", "momentum": 0.9, "lr": 0.01, ...}; a nested setting goes by its own name (the
    optimizer's kind by "optimizer")."""
    config = run.get("config")
    if not isinstance(config, dict):
        config = {k: run[k] for k in _OLD_KEYS if k in run}
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for inner, v in value.items():
                flat[key if inner == "kind" else inner] = v
        else:
            flat[key] = value
    return flat


def differences(runs: list) -> list:
    """The settings whose values are not the same in every run, in the order of the first run's
    configuration. A setting that only some runs have counts when it is a model option (absent:
    the model's default). An optimizer's setting does not count when it comes with the
    optimizer's kind: when only some runs have it (SGD's momentum beside Adam), or when every
    run has its own kind's default (AdamW's weight decay 0.01 beside SGD's 0)."""
    configs = [run_config(r) for r in runs]
    settings = [_optimizer_settings(r) for r in runs]
    defaults = [_optimizer_defaults(s.get("kind")) for s in settings]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = []
    for k in keys:
        if any(k in s and k != "kind" for s in settings):
            if not all(k in s for s in settings) or all(d.get(k, object()) == s[k] for s, d in zip(settings, defaults)):
                continue
        if len({json.dumps(c.get(k, "default"), sort_keys=True) for c in configs}) > 1:
            differ.append(k)
    return differ


def _optimizer_settings(run: dict) -> dict:
    config = run.get("config")
    settings = config.get("optimizer") if isinstance(config, dict) else None
    return settings if isinstance(settings, dict) else {}


def _optimizer_defaults(kind) -> dict:
    """The settings an optimizer of this kind has when none is given (engine.optim)."""
    from engine.optim import OPTIMIZERS
    if kind not in OPTIMIZERS:
        return {}
    return {k: v for k, v in vars(OPTIMIZERS[kind]()).items() if k not in ("lr", "state_names")}


def run_labels(runs: list, names=None) -> list:
    """A label per run: "key=value" for each setting in which the runs differ; the run's name
    (names: one per run, e.g. its file) when none does or two labels would be the same."""
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(runs))]
    keys = differences(runs)
    labels = []
    for run, name in zip(runs, names):
        config = run_config(run)
        labels.append(", ".join(f"{k}={_short(config.get(k, 'default'))}" for k in keys) or name)
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({name})" if label != name else name for label, name in zip(labels, names)]
    return labels


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_short(v) for v in value)
    return str(value)
