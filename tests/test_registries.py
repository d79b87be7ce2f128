"""Each list of names is defined once, next to its implementation; the config accepts exactly
those names. The error types live in ddpmkit.errors; training.config no longer imports presets'
importer (the config <-> presets cycle is gone). The EMA warm-up formula of train.ema_warmup."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import torch

import ddpmkit
from ddpmkit.data.registry import DATASETS
from ddpmkit.data.toy2d import TOY_DATASETS, TOY_NAMES
from ddpmkit.diffusion import PREDICTIONS
from ddpmkit.errors import CheckpointError, ConfigError, DatasetError
from ddpmkit.nn.unet import CONDITIONINGS
from ddpmkit.sampling import SAMPLERS, SPACINGS
from ddpmkit.schedule import SCHEDULES, ScheduleName
from ddpmkit.training.config import (
    DataConfig,
    DiffusionConfig,
    RunConfig,
    SampleConfig,
    config_from_dict,
    validate_config,
)

# (section, key, the registry's names); every name must be accepted and nothing else
REGISTRIES = [
    ("sample", "sampler", tuple(SAMPLERS)),
    ("sample", "spacing", tuple(SPACINGS)),
    ("diffusion", "prediction", tuple(PREDICTIONS)),
    ("model.unet", "conditioning", tuple(CONDITIONINGS)),
    ("diffusion", "schedule", (*SCHEDULES, "custom")),
    ("data", "name", (*DATASETS, *TOY_NAMES)),
]


def _config(sec: str, key: str, value: str) -> RunConfig:
    if sec == "model.unet":
        return validate_config(config_from_dict(RunConfig, {"model": {"unet": {key: value}}}))
    data: dict[str, dict[str, object]] = {sec: {key: value}}
    if (sec, key) == ("diffusion", "schedule") and value == "custom":
        data["diffusion"].update(num_steps=4, betas=[0.1, 0.2, 0.3, 0.4])
        data["sample"] = {"steps": 4}
    return validate_config(config_from_dict(RunConfig, data))


@pytest.mark.parametrize("sec, key, names", REGISTRIES, ids=[f"{s}.{k}" for s, k, _ in REGISTRIES])
def test_config_accepts_every_registry_name_and_names_them_for_an_unknown_one(
    sec: str, key: str, names: tuple[str, ...]
) -> None:
    assert names, "an empty registry"
    for name in names:
        section: object = _config(sec, key, name)
        for part in sec.split("."):
            section = getattr(section, part)
        assert getattr(section, key) == name
    with pytest.raises(ConfigError) as e:
        _config(sec, key, "no_such_name")
    msg = str(e.value)
    assert msg == f"{sec}.{key}: 'no_such_name' is not allowed; expected one of {list(names)}"


def test_literal_types_are_the_registries() -> None:
    def args(cls: type, field: str) -> tuple[object, ...]:
        return typing.get_args(typing.get_type_hints(cls)[field])

    assert set(typing.get_args(ScheduleName)) == set(SCHEDULES)
    assert set(TOY_NAMES) == set(TOY_DATASETS)
    assert args(DiffusionConfig, "schedule") == (*typing.get_args(ScheduleName), "custom")
    assert args(DiffusionConfig, "prediction") == PREDICTIONS == ("eps", "x0", "v")
    assert args(DataConfig, "name") == (*DATASETS, *TOY_NAMES)
    from ddpmkit.nn.unet import UNetConfig

    assert CONDITIONINGS == ("add", "cross", "add+cross")
    assert args(SampleConfig, "sampler") == tuple(SAMPLERS)
    assert args(SampleConfig, "spacing") == tuple(SPACINGS)
    assert UNetConfig.__dataclass_fields__["conditioning"].default in CONDITIONINGS


def test_configs_built_in_python_are_checked_too() -> None:
    bad = dataclasses.replace(RunConfig(), diffusion=DiffusionConfig(prediction="z"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"diffusion\.prediction: 'z' is not allowed"):
        validate_config(bad)
    with pytest.raises(ConfigError, match=r"train\.precision: expected a string, got 16"):
        config_from_dict(RunConfig, {"train": {"precision": 16}})


def test_error_types_have_one_home_and_old_imports_still_work() -> None:
    from ddpmkit.data import DatasetError as data_error
    from ddpmkit.data.images import DatasetError as images_error
    from ddpmkit.training.checkpoint import CheckpointError as ckpt_error
    from ddpmkit.training.config import ConfigError as config_error
    from ddpmkit.training.presets import preset_path

    assert config_error is ConfigError and ckpt_error is CheckpointError
    assert data_error is DatasetError and images_error is DatasetError
    for err in (ConfigError, CheckpointError, DatasetError):
        assert issubclass(err, ValueError) and err.__module__ == "ddpmkit.errors"
    with pytest.raises(ConfigError, match="neither a file nor a built-in preset"):
        preset_path("no_such_preset")


def _imports(module: str) -> set[str]:
    path = Path(ddpmkit.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_config_and_presets_do_not_import_each_other_in_a_cycle() -> None:
    assert "ddpmkit.training.config" not in _imports("ddpmkit.training.presets")
    assert "ddpmkit.errors" in _imports("ddpmkit.training.presets")
    assert "ddpmkit.training.presets" in _imports("ddpmkit.training.config")


def test_ema_warmup_is_the_linear_ramp_the_config_describes() -> None:
    from ddpmkit.training.ema import EMA

    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, decay=0.9, warmup=4)
    decays = []
    for _ in range(6):
        decays.append(ema.current_decay())
        ema.update(net)
    # update n (from 0) uses ema_decay * min(1, n / ema_warmup)
    assert decays == pytest.approx([0.0, 0.225, 0.45, 0.675, 0.9, 0.9])
    assert EMA(net, decay=0.9, warmup=0).current_decay() == 0.9
