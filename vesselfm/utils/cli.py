"""The one way every ``python -m vesselfm.X`` entrypoint starts, logs and fails.

User errors (bad input, missing weights, a wrong override) end the program with one line on
stderr and a non-zero exit status; the traceback is shown only with ``hydra.verbose=true`` or
``VESSELFM_DEBUG=1``. Programming errors keep their traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)

CONFIG_PATH = "pkg://vesselfm.configs"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
EXIT_USER_ERROR = 2
# the shell's convention: 128 + the signal's number
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

T = TypeVar("T")


# Exceptions that, raised out of an entrypoint, are the user's to fix: bad values, missing or
# unreadable files, missing weights. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, TypeError, OSError)


def _debug_requested(cfg: DictConfig | None) -> bool:
    if os.environ.get("VESSELFM_DEBUG", "").lower() in {"1", "true", "yes"}:
        return True
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return True
    try:
        from hydra.core.hydra_config import HydraConfig

        return bool(HydraConfig.get().verbose)
    except Exception:  # noqa: BLE001 - Hydra not initialised (plain function call)
        return False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every ``finally`` (temporary files) runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings for the output record (the config without Hydra's own node)."""
    from omegaconf import OmegaConf

    try:
        settings = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: record it unresolved
        settings = OmegaConf.to_container(cfg, resolve=False)
    settings.pop("hydra", None)
    return settings


def run_guarded(fn: Callable[[DictConfig], T], cfg: DictConfig, tool: str | None = None) -> T:
    """Set torch's threads from ``cfg.threads``, name the run for the output record, call
    ``fn(cfg)``; turn user errors into one line on stderr and exit status 2, and Ctrl-C or
    SIGTERM into one line and exit status 130 / 143 (temporary files removed)."""
    import signal

    # under python -m, fn.__module__ is "__main__": the entrypoint passes its name
    tool = tool or getattr(fn, "__module__", "vesselfm")
    previous = None
    try:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        if "threads" in cfg:  # every packaged entrypoint config has it
            from vesselfm.utils.hardware import apply_threads

            # said at INFO by the jobs where it matters (train, infer), not by every tool
            apply_threads(cfg.threads, level=logging.DEBUG)
        if "cpu_memory" in cfg:  # train and infer: the jobs that allocate full-size tensors
            from vesselfm.utils.hardware import apply_cpu_memory

            apply_cpu_memory(cfg.cpu_memory)
        from vesselfm.utils.outputs import start_run

        start_run(tool, _settings(cfg))
        return fn(cfg)
    except KeyboardInterrupt as err:
        if _debug_requested(cfg):
            raise
        terminated = isinstance(err, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
        print(
            f"error: {tool} {what}; finished outputs are kept, unfinished ones were removed; "
            "rerun the same command to go on",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    except MissingMandatoryValue as err:
        if _debug_requested(cfg):
            raise
        key = getattr(err, "full_key", None) or "a required key"
        print(
            f"error: {key}= is required: python -m {tool} {key}=... (see --help)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_USER_ERROR)
    except USER_ERRORS as err:
        if _debug_requested(cfg):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.debug("user error", exc_info=True)
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def hydra_entrypoint(config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[[], Any]]:
    """Decorate a ``main(cfg)`` function as a Hydra entrypoint reading the packaged configs.

    The configs ship inside the wheel as ``vesselfm.configs``, so the entrypoint works from any
    working directory. ``--help`` prints the config's ``hydra.help`` text.

    Args:
        config_name: the top-level config file in ``configs/`` without ``.yaml``.

    Returns:
        A decorator producing a zero-argument ``main()`` that parses ``sys.argv``.
    """

    def decorator(fn: Callable[[DictConfig], T]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> T:
            return run_guarded(fn, cfg, f"vesselfm.{config_name}")

        hydra_main = hydra.main(
            version_base="1.3", config_path=CONFIG_PATH, config_name=config_name
        )(task)

        @functools.wraps(fn)
        def main() -> Any:
            check_overrides(config_name, sys.argv[1:])
            return hydra_main()

        return main

    return decorator


def check_overrides(config_name: str, argv: list[str]) -> None:
    """Compose ``config_name`` with the command line's overrides before Hydra does, so that a
    typo (``model=tinyy``, an unknown key, an unquoted path with spaces or ``=``) ends with one
    ``error:`` line naming the close matches and exit status 2, instead of Hydra's report.

    Runs that Hydra handles differently (``--help``, ``--cfg``, ``-m`` sweeps, other config
    folders) and debugging (``VESSELFM_DEBUG=1``, ``HYDRA_FULL_ERROR=1``) are left to Hydra.
    """
    from hydra._internal.utils import get_args_parser

    if _debug_requested(None):
        return
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # Hydra's own parser reports its usage errors
        return
    if (
        args.help
        or args.hydra_help
        or args.cfg
        or args.info
        or args.shell_completion
        or args.multirun
        or args.config_path
        or args.config_name
        or args.config_dir
    ):
        return
    message = _override_error(config_name, list(args.overrides))
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="vesselfm.configs", version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def _override_error(config_name: str, overrides: list[str]) -> str | None:
    """One line saying what is wrong with ``overrides``, or ``None`` when they compose."""
    import difflib
    import re

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    tool = f"vesselfm.{config_name}"
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException as err:
            if "=" not in override:
                return (
                    f"cannot read the argument {override!r}: overrides are key=value, and a "
                    f"value holding spaces must be quoted, e.g. 'input=\"/data/scan (1).nii.gz\"'"
                )
            key = override.split("=", 1)[0]
            return (
                f"cannot read the override {override!r} ({str(err).splitlines()[0]}); quote a "
                f"value holding spaces, '=', brackets or parentheses: {key}='\"...\"' "
                f"(python -m {tool} --help)"
            )
    try:
        _compose(config_name, overrides)
        return None
    except MissingConfigException as err:
        text = str(err)
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        if not found:
            return text.splitlines()[0]
        group, option = found.groups()
        close = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"{group}={option}: no such option; choose one of {', '.join(options)}{hint}"
    except (HydraException, OmegaConfBaseException) as err:
        text = str(err)
        found = re.search(r"Could not override '([^']+)'", text)
        if not found:
            return f"{text.splitlines()[0]} (python -m {tool} --help)"
        key = found.group(1)
        others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            keys = _dotted_keys(_compose(config_name, others))
        except (HydraException, OmegaConfBaseException):  # another typo: no suggestion then
            keys = []
        if key in keys:  # it exists but takes no new sub-keys (a struct dict): Hydra's '+' does
            plus = next((o for o in overrides if o.split("=", 1)[0] == key), key)
            return (
                f"{key}: this override adds keys {key} does not have yet; prefix it with '+': "
                f"'+{plus}' (python -m {tool} --help)"
            )
        close = difflib.get_close_matches(key, keys, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{key}: no such key in {tool}'s config{hint} (its keys: python -m {tool} --help)"


def _dotted_keys(cfg: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig as _DictConfig

    keys = []
    for key in cfg.keys() if isinstance(cfg, _DictConfig) else []:
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        try:
            keys += _dotted_keys(cfg._get_node(key), f"{dotted}.")
        except Exception:  # noqa: BLE001 - a node that does not resolve (missing value)
            continue
    return keys
