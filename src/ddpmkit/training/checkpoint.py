"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of a run folder::

    <run>/checkpoints/step_00001000/   model, ema, optimizer, rng .safetensors + state.json
    <run>/checkpoints/latest           the name of the newest complete checkpoint
    <run>/model/                       the exported EMA model: model.safetensors + config.json

A checkpoint is written into a hidden temporary folder, every file fsynced, then the folder is
renamed into place and ``latest`` replaced atomically (seed 000's write-then-rename, applied to a
folder). ``state.json`` is written last and records the SHA-256 of every tensor file, so a
truncated or bit-flipped file is detected at load time. A crash at any moment leaves either the
old or the new checkpoint complete; loaders never see a partial one. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddpmkit.errors import CheckpointError
from ddpmkit.io import atomic_write, atomic_write_text, file_sha256, fsync_dir, read_json_object

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "LoadedCheckpoint",
    "atomic_write_text",
    "clean_temporaries",
    "find_latest",
    "file_sha256",
    "fsync_dir",
    "is_temporary",
    "load_checkpoint",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "resolve_model_path",
    "save_checkpoint",
    "save_model_export",
]

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8})$")
TENSOR_FILES = ("model", "ema", "optimizer", "rng")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def _contiguous(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # safetensors needs contiguous, unshared storage (channels_last weights are not contiguous).
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def optimizer_to_flat(opt_state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into flat tensors (``<param>.<key>``) and JSON data."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        idx, k = name.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for idx_s, kv in meta.get("scalars", {}).items():
        state.setdefault(int(idx_s), {}).update(kv)
    # JSON turns tuples into lists; optimizers store betas as a tuple.
    groups = [
        {k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: Mapping[str, Tensor],
    ema: Mapping[str, Tensor],
    optimizer: dict[str, Any],
    rng: Mapping[str, Tensor],
    meta: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    if (final / "state.json").is_file():  # same step already saved (deterministic resume)
        atomic_write_text(ckpt_root / "latest", final.name + "\n")
        return final
    if final.exists():  # an incomplete folder of that name (not written by this version)
        _remove_dir(final)
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        payload = {"model": model, "ema": ema, "optimizer": opt_tensors, "rng": rng}
        hashes = {}
        for name, tensors in payload.items():
            path = tmp / f"{name}.safetensors"
            save_file(_contiguous(tensors), str(path))
            _fsync_file(path)
            hashes[name] = file_sha256(path)
        state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizer": opt_meta,
            "sha256": hashes,
            **meta,
        }
        state_path = tmp / "state.json"
        with open(state_path, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(ckpt_root)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    _prune(ckpt_root, keep)
    return final


def _complete_dirs(ckpt_root: Path) -> list[Path]:
    dirs = [p for p in ckpt_root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted((p for p in dirs if (p / "state.json").is_file()), key=lambda p: p.name)


def _remove_dir(path: Path) -> None:
    """Delete a checkpoint folder so that a crash midway never leaves a partial ``step_*``
    folder: first an atomic rename to a ``.tmp-`` name (which loaders ignore and
    :func:`clean_temporaries` removes at the next start), then the deletion."""
    doomed = path.with_name(f".tmp-delete-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def _prune(ckpt_root: Path, keep: int) -> None:
    for old in _complete_dirs(ckpt_root)[:-keep]:
        _remove_dir(old)


def is_temporary(name: str) -> bool:
    """Whether ``name`` in ``checkpoints/`` is a write or delete in progress (a ``.tmp-`` folder
    or the ``.latest.tmp-`` file of :func:`atomic_write_text`): loaders never read these, and
    :func:`clean_temporaries` removes them at the next start."""
    return name.startswith(".tmp-") or name.startswith(".latest.tmp-")


def clean_temporaries(run_dir: Path) -> int:
    """Remove temporary folders left by a crash during a save; returns how many."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return 0
    n = 0
    for p in root.iterdir():
        if is_temporary(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


def find_latest(run_dir: Path) -> Path | None:
    """Newest complete checkpoint folder of a run (``latest`` if valid, else the newest found)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    latest = root / "latest"
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        cand = root / name
        if _STEP_DIR.match(name) and (cand / "state.json").is_file():
            return cand
    dirs = _complete_dirs(root)
    return dirs[-1] if dirs else None


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]  # the JSON: step, config, ...
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    optimizer: dict[str, Any] | None
    rng: dict[str, Tensor]


def _read_tensors(path: Path, expected_sha: str | None) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing; the checkpoint is incomplete")
    if expected_sha is not None and file_sha256(path) != expected_sha:
        raise CheckpointError(
            f"{path}: contents do not match the checksum in state.json (truncated or corrupted)"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _read_state(path: Path) -> dict[str, Any]:
    state = read_json_object(path, CheckpointError, "this is not a ddpmkit checkpoint")
    version = state.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: no format_version; this is not a ddpmkit checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this ddpmkit supports "
            f"({FORMAT_VERSION}); upgrade ddpmkit"
        )
    return state


def load_checkpoint(path: Path, *, with_optimizer: bool = True) -> LoadedCheckpoint:
    """Load and verify a checkpoint folder (or a run folder: its latest checkpoint)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        found = find_latest(path)
        if found is None:
            raise CheckpointError(f"{path}: the run has no complete checkpoint")
        path = found
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    state = _read_state(path / "state.json")
    sha = state.get("sha256", {})
    model = _read_tensors(path / "model.safetensors", sha.get("model"))
    ema = _read_tensors(path / "ema.safetensors", sha.get("ema"))
    rng = _read_tensors(path / "rng.safetensors", sha.get("rng"))
    opt = None
    if with_optimizer:
        flat = _read_tensors(path / "optimizer.safetensors", sha.get("optimizer"))
        opt = optimizer_from_flat(flat, state["optimizer"])
    return LoadedCheckpoint(path, state, model, ema, opt, rng)


def save_model_export(out_dir: Path, weights: Mapping[str, Tensor], meta: dict[str, Any]) -> None:
    """Write the standalone model (``model.safetensors`` + ``config.json``) atomically."""
    tensors = _contiguous(weights)
    path = atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    sha = file_sha256(path)
    info = {"format_version": FORMAT_VERSION, "sha256": {"model": sha}, **meta}
    atomic_write_text(out_dir / "config.json", json.dumps(info, indent=1))


def resolve_model_path(path: Path) -> tuple[dict[str, Any], Path]:
    """Find (metadata, weights file) for sampling from a run, checkpoint or export folder.

    Prefers EMA weights: a checkpoint's ``ema.safetensors``, or an export's ``model.safetensors``
    (which holds the EMA weights).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    if (path / "checkpoints").is_dir():
        found = find_latest(path)
        if found is None:
            raise CheckpointError(f"{path}: the run has no complete checkpoint")
        path = found
    if (path / "state.json").is_file():
        return _read_state(path / "state.json"), path
    if (path / "config.json").is_file():
        return _read_state(path / "config.json"), path
    raise CheckpointError(
        f"{path}: not a ddpmkit run, checkpoint or model folder (no state.json or config.json)"
    )
