"""Config files and --set overrides: property-based (hypothesis) and by example. Every invalid
value is a ConfigError whose one-line message names the key; nothing is silently defaulted."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpmkit.training.config import (
    ConfigError,
    MLPSection,
    RunConfig,
    UNetSection,
    apply_overrides,
    config_from_dict,
    load_config,
    validate_config,
)
from ddpmkit.training.presets import list_presets

SECTIONS = {
    f.name: f.type
    for f in dataclasses.fields(RunConfig)
    if f.name in ("model", "diffusion", "data", "train", "sample")
}
HINTS = {sec: typing.get_type_hints(typing.get_type_hints(RunConfig)[sec]) for sec in SECTIONS}
HINTS["model.unet"] = typing.get_type_hints(UNetSection)  # [model.unet], [model.mlp]
HINTS["model.mlp"] = typing.get_type_hints(MLPSection)
KEYS = [(sec, k) for sec, hints in HINTS.items() for k in hints]


def nest(sec: str, name: str, value: object) -> dict[str, object]:
    """{"model.unet", "x", v} -> {"model": {"unet": {"x": v}}}."""
    out: dict[str, object] = {name: value}
    for part in reversed(sec.split(".")):
        out = {part: out}
    return out


def wrong_value(tp: object) -> st.SearchStrategy[object]:
    """Values of a different TOML type than the field's."""
    if tp is bool:
        return st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False))
    if tp is int:
        fractional = st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v))
        return st.one_of(st.text(max_size=5), fractional, st.booleans())
    if tp is float:
        return st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2))
    if tp is str:
        return st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False))
    return st.one_of(
        st.text(min_size=1, max_size=5), st.booleans(), st.floats(allow_nan=False)
    )  # tuples


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KEYS), st.data())
def test_wrong_types_name_the_key(key: tuple[str, str], data: st.DataObject) -> None:
    sec, name = key
    value = data.draw(wrong_value(HINTS[sec][name]))
    with pytest.raises(ConfigError) as e:
        validate_config(config_from_dict(RunConfig, nest(sec, name, value)))
    msg = str(e.value)
    assert f"{sec}.{name}" in msg and "\n" not in msg


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SECTIONS)), st.text(min_size=1, max_size=12))
def test_unknown_keys_are_rejected(sec: str, name: str) -> None:
    if name in HINTS[sec] or (
        sec == "model" and name in {*HINTS["model.unet"], *HINTS["model.mlp"]}
    ):
        return  # flat U-Net/MLP keys under [model] are read into their section
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict(RunConfig, {sec: {name: 1}})


NUMERIC_LIMITS = [
    ("train", "steps", 0), ("train", "batch_size", -3), ("train", "lr", 0.0),
    ("train", "lr", float("nan")), ("train", "ema_decay", 1.0), ("train", "cfg_dropout", -0.1),
    ("train", "grad_accum", 0), ("diffusion", "num_steps", 0), ("diffusion", "min_snr_gamma", -1.0),
    ("model.unet", "dropout", 1.0), ("model.unet", "base_channels", 0), ("data", "channels", 2),
    ("model.mlp", "depth", 0),
    ("sample", "steps", 0), ("sample", "num", 0),
]  # fmt: skip


@pytest.mark.parametrize("sec, name, value", NUMERIC_LIMITS)
def test_out_of_range_values_name_the_key(sec: str, name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"{sec}\.{name}"):
        validate_config(config_from_dict(RunConfig, nest(sec, name, value)))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_arbitrary_set_strings_never_crash(text: str) -> None:
    # Anything after --set either applies cleanly and validates, or is a ConfigError.
    try:
        data = apply_overrides({}, [text])
        validate_config(config_from_dict(RunConfig, data))
    except ConfigError as e:
        assert "\n" not in str(e)


def test_every_preset_loads_and_round_trips() -> None:
    for name in list_presets():
        cfg = load_config(name)
        again = validate_config(config_from_dict(RunConfig, cfg.to_dict()))
        assert again == cfg


def test_overrides_and_paths(tmp_path: Path) -> None:
    cfg = load_config("moons", ["train.steps=7", 'model.kind="mlp_step"', "data.image_size=28"])
    assert cfg.train.steps == 7 and cfg.model.kind == "mlp_step" and cfg.data.image_size == (28,)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config("moons", ["train.steps"])
    with pytest.raises(ConfigError, match="plain folder name"):
        load_config("moons", ['name="../../etc"'])
    p = tmp_path / "c.toml"
    p.write_text('name = "x"\n[train]\nsteps = 3\n')
    assert load_config(p).run_dir == Path("runs") / "x"


def test_model_settings_live_in_their_section_and_flat_keys_still_load() -> None:
    """[model.unet] / [model.mlp] hold the networks' settings; the flat keys of saved runs and
    older --set overrides (model.base_channels=16) are read into the right section."""
    cfg = load_config("fashion_mnist")
    assert cfg.model.kind == "unet" and cfg.model.unet.patch_size == 2
    flat = load_config("fashion_mnist", ["model.base_channels=16", "model.depth=2"])
    nested = load_config("fashion_mnist", ["model.unet.base_channels=16", "model.mlp.depth=2"])
    assert flat == nested and flat.model.unet.base_channels == 16 and flat.model.mlp.depth == 2
    assert flat.model.unet.channel_mults == cfg.model.unet.channel_mults  # the rest kept
    saved = cfg.to_dict()
    legacy = {**saved, "model": {"kind": "unet", **saved["model"]["unet"]}}  # an old config.json
    assert validate_config(config_from_dict(RunConfig, legacy)) == cfg
    with pytest.raises(ConfigError, match="model.unet: expected a table"):
        config_from_dict(RunConfig, {"model": {"unet": 3}})


def test_classic_ema_settings_beside_a_power_ema_are_a_one_line_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """train.ema_sigma_rel > 0 ignores ema_decay/ema_warmup: a warning naming them, not an error
    (moons sets both; one --set switches it to the power EMA)."""
    lines: list[str] = []
    cfg = load_config("moons", ["train.ema_sigma_rel=0.1"], log=lines.append)
    assert cfg.train.ema_sigma_rel == 0.1  # still accepted
    assert lines == [
        "warning: train.ema_decay = 0.995 and train.ema_warmup = 200 are ignored: "
        "train.ema_sigma_rel = 0.1 makes the run's average the power-function EMA; drop them, "
        "or set train.ema_sigma_rel = 0 for the classic EMA"
    ]
    quiet: list[str] = []
    load_config("moons", log=quiet.append)  # the classic EMA: both used
    load_config("fashion_mnist", log=quiet.append)  # power EMA with the default decay/warm-up
    load_config("fashion_mnist", ["train.ema_decay=0.999"], log=quiet.append)  # = the default
    assert quiet == []
    with pytest.warns(UserWarning, match=r"^train\.ema_decay = 0\.99 is ignored: .*drop it,"):
        load_config("fashion_mnist", ["train.ema_decay=0.99"])  # no log: warnings.warn
    # the command line: one stderr line before the run starts (here it stops at the data)
    from ddpmkit.cli import main

    sets = ["train.ema_warmup=500", 'data.name="folder"', 'data.root="/no/such/folder"']
    assert main(["train", "fashion_mnist", *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: train.ema_warmup = 500 is ignored") and len(err) == 2
