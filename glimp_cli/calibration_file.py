"""glimp-calibration.yaml: thresholds saved by `glimp calibrate --save`, read back by every command."""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any

import yaml

from glimp_cli.config import PACKAGED_CONFIG, PAIR_CHECKS, Config, key_lines
from glimp_cli.errors import ConfigError, WriteError
from glimp_cli.files import write_atomic

CALIBRATION_FILENAME = "glimp-calibration.yaml"
CALIBRATION_HEADER = (
    "# glimp calibration: entropy thresholds chosen by `glimp calibrate --save`, by pair.\n"
    "# `glimp ask` and `glimp bench` use them when no --threshold is given; models.yaml is not changed.\n"
    "# An entry applies while the pair has the same small and large models; delete it to go back.\n"
)


def calibration_path(config_path: str | os.PathLike[str]) -> Path:
    """Where `glimp calibrate --save` keeps thresholds for a models.yaml: beside it, or for the
    packaged one in $XDG_CONFIG_HOME/glimp (default ~/.config/glimp)."""
    config_path = Path(config_path)
    if config_path.resolve() == PACKAGED_CONFIG.resolve():
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return base / "glimp" / CALIBRATION_FILENAME
    return config_path.with_name(CALIBRATION_FILENAME)


def read_calibrations(path: Path) -> dict[str, Any]:
    """The saved entries by pair name ({} without a file), or a ConfigError naming the file."""
    return _read(path)[0]


def _read(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The saved entries by pair name, and the line of every key (for errors)."""
    if not path.is_file():
        return {}, {}
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) or {}
        lines = key_lines(yaml.compose(text))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8, or an integer too long for Python
        raise ConfigError(
            f"{path}: unreadable calibration file ({str(exc).splitlines()[0]}): fix or delete it"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: unreadable calibration file (nested too deeply): fix or delete it") from None
    entries = raw.get("pairs", {}) if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: expected a mapping 'pairs:' of calibrated pairs: fix or delete the file")
    return {str(name): entry for name, entry in entries.items()}, lines


def apply_calibration(config: Config, path: str | os.PathLike[str] | None = None) -> Config:
    """The config with each pair's threshold and entropy mode replaced by its saved calibration.

    A calibration applies only while the pair still has the small and large models it was measured
    with; without a calibration file (default: calibration_path(config.path)) the config is unchanged.
    """
    path = Path(path) if path is not None else calibration_path(config.path)
    pairs = dict(config.pairs)
    entries, lines = _read(path)
    for name, entry in entries.items():
        pair = pairs.get(name)
        if (
            pair is None
            or not isinstance(entry, dict)
            or (entry.get("small"), entry.get("large")) != (pair.small, pair.large)
        ):
            continue  # another config's pair, or measured on other models: stale
        threshold, entropy = entry.get("threshold"), entry.get("entropy")
        for key, value in (("threshold", threshold), ("entropy", entropy)):
            if key == "threshold" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problem = "must be a number"
            else:
                problem = PAIR_CHECKS[key](value)
            if problem:
                line = lines.get(("pairs", name, key)) or lines.get(("pairs", name))
                where = f"{path}:{line}" if line else str(path)
                raise ConfigError(f"{where}: pair '{name}': {key} {problem}, got {value!r}: fix or delete the entry")
        pairs[pair.name] = dataclasses.replace(pair, threshold=float(threshold), entropy=entropy)
    return dataclasses.replace(config, pairs=pairs)


def save_calibration(report: dict[str, Any], path: Path) -> Path:
    """Record a `glimp calibrate` report's threshold for its pair; other pairs' entries stay."""
    entries = read_calibrations(path)
    entry = {
        "threshold": report["threshold"],
        "entropy": report["entropy_mode"],
        "small": report["small"],
        "large": report["large"],
        "data": report["data"],
        "problems": report["probe"]["problems"],
        "steps": report["probe"]["steps"],
        "method": report["method"],
        "target_rate": report["target_rate"],
        "large_share": round(report["large_share"], 6),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if report["sweep"] is not None:
        entry["objective"] = report["sweep"]["rule"]
    entries[report["pair"]] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: cannot create {path.parent}: {exc.strerror}") from None
    write_atomic(path, CALIBRATION_HEADER + yaml.safe_dump({"pairs": entries}, sort_keys=False, allow_unicode=True))
    return path.absolute()
