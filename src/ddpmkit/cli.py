"""The ``ddpm`` command line: a thin layer that builds configs and calls the library.

    ddpm train [CONFIG] [--set key=value ...] [--out DIR] [--resume]
    ddpm sample RUN_OR_CHECKPOINT [--sampler dpmpp] [--steps 20] [--guidance 2] [--num 80] ...
    ddpm eval ...   ddpm plot ...   ddpm schedule RUN [--sampler unipc] [--steps 10] ...
    ddpm ema RUN --sigma-rel 0.08 [--step T] [--out DIR]   (post-hoc EMA from snapshots)

A user mistake (bad config, missing dataset, corrupt checkpoint, wrong-shaped input) is one line
on stderr, ``ddpm: error: ...``, exit status 2, and nothing written. ``DDPMKIT_DEBUG=1`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import ddpmkit.cli_ema as cli_ema
import ddpmkit.cli_eval as cli_eval
import ddpmkit.cli_plot as cli_plot
import ddpmkit.cli_sample as cli_sample
import ddpmkit.cli_schedule as cli_schedule
from ddpmkit.data.download import SOURCES
from ddpmkit.errors import CheckpointError, ConfigError, DatasetError, SettingsError, UsageError

__all__ = ["main"]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a TOML config or a built-in preset")
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="TOML file or preset name (fashion_mnist, s_curve, ...); default: fashion_mnist, "
        "or the run's saved config with --resume",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=500 (repeatable)",
    )
    p.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    p.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download MNIST/Fashion-MNIST into the cache (checksummed)")
    p.add_argument("dataset", choices=sorted(SOURCES))
    p.add_argument(
        "--mirror", default=None, help="base URL to fetch from instead of the canonical one"
    )
    p.add_argument("--dest", default=None, help="folder (default: ~/.cache/ddpmkit/<dataset>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm", description="Denoising diffusion models: train, sample, evaluate, plot."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    cli_sample.add_parser(sub)
    _add_fetch(sub)
    # Imported, never guarded: a broken import must fail loudly, not remove a command.
    cli_eval.register(sub)
    cli_plot.register(sub)
    cli_schedule.register(sub)
    cli_ema.register(sub)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from ddpmkit.fit import train
    from ddpmkit.training.config import (
        RunConfig,
        apply_overrides,
        config_from_dict,
        load_config,
        validate_config,
    )

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.out is not None:
        overrides.append(f'out_dir="{Path(args.out).as_posix()}"')
    if args.resume and args.config is None:
        # Continue the run as it was configured; overrides still apply (e.g. more steps).
        base = load_config("fashion_mnist", overrides, log=lambda _: None)  # for its run_dir
        saved = base.run_dir / "config.json"
        if not saved.is_file():
            raise UsageError(
                f"{base.run_dir}: no saved run to resume; give --out RUN_DIR or a config"
            )
        from ddpmkit.io import read_json_object

        data = apply_overrides(read_json_object(saved, ConfigError), overrides)
        cfg = validate_config(config_from_dict(RunConfig, data), log=_info)
    else:
        name = args.config if args.config is not None else "fashion_mnist"
        cfg = load_config(name, overrides, log=_info)
    result = train(cfg, resume=args.resume, progress=not args.no_progress, log=_info)
    return 130 if result.interrupted else 0


def _cmd_sample(args: argparse.Namespace) -> int:
    paths = cli_sample.run(args, log=_info)
    for p in paths:
        _info(f"wrote {p}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ddpmkit.data.download import fetch_dataset

    dest = fetch_dataset(
        args.dataset, base_url=args.mirror, dest=Path(args.dest) if args.dest else None, log=_info
    )
    _info(f"{args.dataset} is in {dest}")
    return 0


def _info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ddpmkit.training.loop import TrainingError

    handlers = {"train": _cmd_train, "sample": _cmd_sample, "fetch": _cmd_fetch}
    handler = handlers.get(args.command) or args.handler
    if args.command == "train" and threading_main():
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        return int(handler(args))
    except SettingsError as e:
        if os.environ.get("DDPMKIT_DEBUG"):
            raise
        print(f"ddpm: error: {e.as_flag()}", file=sys.stderr)
        return 2
    except (ConfigError, CheckpointError, DatasetError, UsageError) as e:
        if os.environ.get("DDPMKIT_DEBUG"):
            raise
        print(f"ddpm: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"ddpm: error: {e}", file=sys.stderr)
        return 1
    except (
        ValueError,
        OSError,
    ) as e:  # e.g. a disk full during a save, bad values in library calls
        if os.environ.get("DDPMKIT_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ddpm: error: {msg}", file=sys.stderr)
        return 2


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
