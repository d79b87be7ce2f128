"""The layering rule of ARCHITECTURE.md, read from the source: a module imports only from its
own unit (module or package) or from a strictly lower layer. Every import counts: top-level,
inside functions (lazy imports) and under ``TYPE_CHECKING``.

On commit 31ee7db this failed: ``training/previews.py`` and ``training/sample_cmd.py``
imported ``viz`` (a sibling of ``training``), ``evaluation`` sampled through
``training.sample_cmd``, ``training/loop.py`` imported the package facade.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ddpmkit"

# unit -> layer (ARCHITECTURE.md, "Module map and dependency rule")
LAYERS: dict[str, int] = {
    "errors": 0,
    "gaussians": 0,
    "io": 0,
    "schedule": 0,
    "version": 0,
    "diffusion": 1,
    "nn": 1,
    "data": 1,
    "text": 1,
    "sampling_core": 2,
    "solvers": 3,
    "sampling": 4,
    "sample_settings": 5,
    "step_schedule": 5,
    "training": 6,
    "viz": 6,
    "trained": 7,
    "previews": 7,
    "evaluation": 8,
    "fit": 8,
    "cli_ema": 9,
    "cli_eval": 9,
    "cli_plot": 9,
    "cli_sample": 9,
    "cli_schedule": 9,
    "cli": 10,
    "": 11,  # the package facade ddpmkit/__init__.py: imported by no module of the package
}
NO_SCHEDULE = ("nn",)  # networks never see the schedule: (x_t, t[, y]) -> same shape


def _unit(module: str) -> str:
    """'ddpmkit.training.loop' -> 'training'; 'ddpmkit' -> ''."""
    parts = module.split(".")
    assert parts[0] == "ddpmkit", module
    return parts[1] if len(parts) > 1 else ""


def _modules(src: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(path: Path, module: str, src: Path) -> list[tuple[int, str]]:
    """(line, imported ddpmkit module) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name != "ddpmkit":
                found.append((node.lineno, name))
                continue
            for a in node.names:  # "from ddpmkit import x": a submodule, or the facade's x
                sub = (src / a.name).is_dir() or (src / f"{a.name}.py").is_file()
                found.append((node.lineno, f"ddpmkit.{a.name}" if sub else "ddpmkit"))
    return [(ln, n) for ln, n in found if n == "ddpmkit" or n.startswith("ddpmkit.")]


def violations(src: Path = SRC) -> list[str]:
    bad = []
    for module, path in _modules(src):
        unit = _unit(module)
        if unit not in LAYERS:
            bad.append(f"{module}: not in the layer map; add its unit to LAYERS and ARCHITECTURE")
            continue
        where = path.relative_to(src.parent)
        for line, name in _imports(path, module, src):
            target = _unit(name)
            if target == unit:
                continue
            if target not in LAYERS or LAYERS[target] >= LAYERS[unit]:
                bad.append(
                    f"{where}:{line}: {module} (layer {LAYERS[unit]}) "
                    f"-> {name} (layer {LAYERS.get(target, '?')})"
                )
            elif unit in NO_SCHEDULE and target == "schedule":
                bad.append(f"{where}:{line}: {module} -> {name}: networks never see the schedule")
    return bad


def test_every_import_goes_to_a_lower_layer() -> None:
    assert violations() == []


def test_the_rule_catches_an_upward_and_a_sibling_import(tmp_path: Path) -> None:
    # The checker on two synthetic modules: training -> viz (siblings), sampling -> training.
    src = tmp_path / "ddpmkit"
    (src / "training").mkdir(parents=True)
    (src / "training" / "x.py").write_text("def f():\n    from ddpmkit.viz.grid import save_grid\n")
    (src / "sampling.py").write_text("from ddpmkit.training import config\n")
    (src / "nn").mkdir()
    (src / "nn" / "y.py").write_text("from ddpmkit.schedule import NoiseSchedule\n")
    found = violations(src)
    assert len(found) == 3, found
    assert any("ddpmkit.training.x (layer 6) -> ddpmkit.viz.grid (layer 6)" in v for v in found)
    assert any("ddpmkit.sampling (layer 4) -> ddpmkit.training (layer 6)" in v for v in found)
    assert any("ddpmkit.nn.y -> ddpmkit.schedule: networks never" in v for v in found)


@pytest.mark.parametrize("unit", sorted(u for u in LAYERS if u))
def test_the_map_names_only_units_that_exist(unit: str) -> None:
    assert (SRC / unit).is_dir() or (SRC / f"{unit}.py").is_file(), unit
