"""Built-in TOML presets shipped inside the package (``ddpm train fashion_mnist``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ddpmkit.errors import ConfigError

__all__ = ["list_presets", "preset_path"]


def _preset_dir() -> Path:
    return Path(str(resources.files("ddpmkit") / "presets"))


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in _preset_dir().glob("*.toml"))


def preset_path(name: str) -> Path:
    """Path of the built-in preset ``name``; ConfigError listing the presets if there is none."""
    p = _preset_dir() / f"{name}.toml"
    if not p.is_file():
        raise ConfigError(
            f"config {name!r} is neither a file nor a built-in preset; presets: {list_presets()}"
        )
    return p
