"""Bad input to `python -m pantheon.train` fails in one `error:` line, exit 2, before Hydra writes anything.

Why this exists: @hydra.main creates the run directory and writes .hydra/{config,hydra,overrides}.yaml before any
of our code runs (a refused `+logger.wandb.api_key=...` was already on disk three times), reports its own errors
(unknown group option, typo'd key, bad override syntax) as multi-line text with exit code 1, and a value of the
wrong type only fails once everything is built. So train.py's `__main__` calls `check_command_line` first: it
composes the same config with Hydra's compose API (nothing written), turns Hydra's errors into one line with the
fix, checks every `_target_` node's simple values against its constructor's type hints, and runs
pantheon.utils.config_checks.check_config, for each job of a `--multirun` sweep. Then Hydra runs as before.

`removed_if_refused` covers the errors only a running job finds (a data folder that does not exist): a run
directory left holding nothing but Hydra's .hydra/ and log files is removed again.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from pantheon.utils.cli import closest, did_you_mean
from pantheon.utils.errors import USER_ERROR_EXIT_CODE, UserError, exit_on_user_error

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"  # the config_path of train.py's @hydra.main
RUN_FLAGS = ("-m", "--multirun", "-r", "--run")  # any other flag (--help, --cfg, --info, ...) is Hydra's own
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
MAX_SWEEP_JOBS = 32  # jobs of a sweep checked before it starts (~0.2 s each); a bigger one: its first 32


@exit_on_user_error
def check_command_line(argv: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> None:
    """Check `python -m pantheon.train <argv>` (default: sys.argv) before Hydra runs it; a UserError exits 2
    with one line."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg.startswith("-") and arg not in RUN_FLAGS for arg in argv):
        return  # Hydra's help, --cfg, --info, config-path flags: Hydra's behaviour, unchanged
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    overrides = [arg for arg in argv if arg not in RUN_FLAGS]
    from hydra import initialize_config_dir  # late: keeps `import pantheon.utils` light

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="train"):
        for job in sweep_jobs(overrides, multirun):
            check_job(job)


def sweep_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job this command line starts: one, or each combination of a sweep."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:  # OverrideParseException: names the argument on its own first line
        bad = next((arg for arg in overrides if not parses(arg)), " ".join(overrides))
        raise UserError(
            f"cannot parse the override {bad!r}: {first_line(err)} (write key=value; quote values with "
            "special characters, e.g. key='a b'; grammar: https://hydra.cc/docs/advanced/override_grammar/basic)"
        ) from None
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        text = sweeps[0].input_line
        raise UserError(
            f"{text} is a sweep: add --multirun (-m) to run one job per value, or write {sweeps[0].get_key_element()}"
            f"=[...] for a list, or quote the value for a string"
        )
    if not sweeps:
        return [overrides]
    try:
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=MAX_SWEEP_JOBS)
    except HydraException:  # a sweep only another sweeper understands (interval(), tag()): check the rest
        return [[o.input_line for o in parsed if not o.is_sweep_override()]]
    return [list(job) for job in batches[0]]


def parses(arg: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(arg)
    except HydraException:
        return False
    return True


def check_job(overrides: list[str]) -> None:
    """Compose one job's config as Hydra will, then check its values, its secrets and its hardware."""
    from hydra import compose
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from pantheon.cluster.environment import global_rank
    from pantheon.utils.config_checks import check_config  # late: it imports the cluster package
    from pantheon.utils.run_lock import check_run_dir_free

    try:
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as err:
        raise missing_option_error(err) from None
    except (HydraException, OmegaConfBaseException) as err:
        raise unknown_key_error(overrides) or UserError(first_line(err)) from None
    check_value_types(cfg)
    in_job = OmegaConf.select(cfg, "hydra.launcher._target_") == BASIC_LAUNCHER
    check_config(cfg, in_job=in_job)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=False)
    # Before Hydra rewrites the .hydra/ of a run that is still going. Only rank 0 asks: the other ranks of this
    # run (Lightning relaunches the command line for each local rank) find the lock their rank 0 holds.
    if in_job and run_dir and global_rank() == 0:
        check_run_dir_free(run_dir)


def missing_option_error(err: Exception) -> UserError:
    """`trainer=gpux`: name the group, the closest option and all options."""
    found = re.search(r"Could not find '(.+)/([^/']+)'", str(err))
    options = list(getattr(err, "options", None) or [])
    if not found or not options:
        return UserError(first_line(err))
    group, value = found.groups()
    return UserError(
        f"{group}={value}: no such {group} config{did_you_mean(value, options)}: choose one of "
        f"{'|'.join(options)} (configs/{group}/)"
    )


def unknown_key_error(overrides: list[str]) -> UserError | None:
    """The first override that names a key the config does not have (or `+` on one it has), with the closest
    valid key; None when every key exists (the composition failed for another reason)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create().parse_overrides(overrides)
    is_group = [bool(loader.get_group_options(o.key_or_group)) for o in parsed]
    groups = [o.input_line for o, group in zip(parsed, is_group, strict=True) if group]
    try:  # config overrides apply after the defaults list: compose without them, then check their keys
        base = compose(config_name="train", overrides=groups, return_hydra_config=True)
    except Exception:
        return None
    added: set[str] = set()
    for override, group in zip(parsed, is_group, strict=True):
        key = override.key_or_group
        if group or override.is_force_add() or key in added:
            continue
        missing = missing_part(base, key)
        if override.is_add():
            if missing is None:
                return UserError(
                    f"+{key}: {key} already exists: drop the '+' to override it ({override.input_line[1:]}), "
                    "or use ++ to add or override"
                )
            added.add(key)
        elif missing is not None:
            prefix, name, siblings = missing
            suggestion = closest(name, siblings)
            hint = f"did you mean {prefix}{suggestion}? " if suggestion else ""
            under = f" under {prefix.rstrip('.')}" if prefix else ""
            message = f"{prefix}{name} is not in the config ({hint}valid keys{under}: {', '.join(shorten(siblings))})"
            if override.is_delete():
                return UserError(f"cannot delete {key}: {message}")
            return UserError(
                f"cannot override {key}: {message}; to add a new key write +{override.input_line}"
            )
    return None


def missing_part(cfg: DictConfig, key: str) -> tuple[str, str, list[str]] | None:
    """For `a.b.c`, the first part the config lacks as (prefix 'a.', 'b', keys of a); None when it exists (or
    cannot be told: a list, an interpolation)."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None
        siblings = [str(k) for k in node]
        if part not in siblings:
            siblings = [k for k in siblings if not k.startswith("_")]  # _target_ & co: not for users to set
            return ".".join(parts[:i]) + ("." if i else ""), part, siblings
        try:
            node = node[part]
        except Exception:
            return None
    return None


def shorten(names: list[str], limit: int = 12) -> list[str]:
    return names if len(names) <= limit else [*names[:limit], "..."]


def first_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's messages span lines; the first non-empty one names the problem."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# --- value types: every `_target_` node's simple values against its constructor's type hints ---------------


def check_value_types(cfg: DictConfig) -> None:
    """Every configured value whose parameter annotation is made of simple types (int, float, bool, str, None,
    Literal, unions of these) must fit it, and every key must be a parameter (unless the target takes **kwargs):
    `trainer.max_epochs=abc` fails here, not after the data and model were built."""
    for path, node in target_nodes(cfg):
        check_target_node(path, node)


def target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(dotted path, node) for each node with a `_target_`, outside Hydra's own `hydra` node."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        items: Any = node.items_ex(resolve=False)
    elif isinstance(node, ListConfig):
        items = enumerate(node._iter_ex(resolve=False))
    else:
        return
    for key, child in items:
        if not path and key == "hydra":
            continue
        if isinstance(child, (DictConfig, ListConfig)):
            yield from target_nodes(child, f"{path}.{key}" if path else str(key))


def check_target_node(path: str, node: DictConfig) -> None:
    from hydra.utils import get_method

    target = str(node._get_node("_target_")._value())  # type: ignore[union-attr]
    try:
        obj = get_method(target)
    except Exception as err:
        raise UserError(f"{path}._target_={target} cannot be imported: {first_line(err)}") from None
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    hints = parameter_hints(obj, signature)
    for key in node:
        key = str(key)
        if key.startswith("_"):  # _target_, _partial_, _convert_, _recursive_, _args_: instantiate's own
            continue
        if key not in signature.parameters:
            if takes_kwargs:
                continue
            raise UserError(
                f"{path}.{key} is not a parameter of {target}{did_you_mean(key, signature.parameters)}: "
                f"fix the key or remove it (~{path}.{key})"
            )
        if key not in hints:
            continue
        try:
            value = node[key]
        except Exception:  # an interpolation only Hydra's run resolves (${hydra:...}): not checked here
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            continue
        if accepts(value, hints[key]) is False:
            raise UserError(
                f"{path}.{key}={value_text(value)} must be {describe(hints[key])} "
                f"({target} {key}: {annotation_text(hints[key])})"
            )


def parameter_hints(obj: Any, signature: inspect.Signature) -> dict[str, Any]:
    """Evaluated annotations of the parameters; one that names something only imported for type checkers
    (a string that does not evaluate) is left out rather than failing all of them."""
    func = inspect.unwrap(obj.__init__ if isinstance(obj, type) else obj)
    try:
        return typing.get_type_hints(func)
    except Exception:
        pass
    namespace = vars(sys.modules.get(getattr(func, "__module__", ""), types.ModuleType("empty")))
    hints = {}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))  # the target's own annotation, in its module
            except Exception:
                continue
        if annotation is not inspect.Parameter.empty:
            hints[name] = annotation
    return hints


def accepts(value: object, annotation: Any) -> bool | None:
    """Whether `value` fits `annotation`; None when the annotation has anything but simple types (not judged).
    A float parameter accepts an int; bool is not an int here (`max_epochs=true` is a mistake)."""
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        results = [accepts(value, arg) for arg in typing.get_args(annotation)]
        return None if None in results else any(results)
    return None


def describe(annotation: Any) -> str:
    """'an int', 'an int or null', "one of 'a'|'b'|null": what a simple annotation accepts, in words."""
    names = {int: "an int", float: "a float", bool: "true or false", str: "a string", type(None): "null"}
    words: list[str] = []
    choices: list[str] = []
    for arg in flatten(annotation):
        if typing.get_origin(arg) is Literal:
            choices += [value_text(choice) for choice in typing.get_args(arg)]
        else:
            words.append(names.get(arg, str(arg)))
    if choices:
        return "one of " + "|".join([*choices, *(["null"] if "null" in words else [])])
    return " or ".join(dict.fromkeys(words))


def flatten(annotation: Any) -> list[Any]:
    """The members of a (nested) Union; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in flatten(arg)]
    return [type(None) if annotation is None else annotation]


def value_text(value: object) -> str:
    """A value as written on the command line: 'abc', 3, true, null."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def annotation_text(annotation: Any, limit: int = 80) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = text.replace("typing.", "").replace("NoneType", "None")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- a run refused by its own checks leaves no run directory behind ----------------------------------------


@contextlib.contextmanager
def removed_if_refused(run_dir: str | Path) -> Iterator[None]:
    """Around train(): when it exits with a user error, remove the run directory Hydra made for it if it holds
    nothing but what a refused run writes (never checkpoints, metrics or anything else)."""
    try:
        yield
    except SystemExit as exit_:
        if exit_.code == USER_ERROR_EXIT_CODE:
            remove_empty_run_dir(Path(run_dir))
        raise


def remove_empty_run_dir(run_dir: Path) -> bool:
    """Remove `run_dir` if every file in it is one a refused run leaves (Hydra's .hydra/ dumps, *.log, the run
    lock, a logger's hparams.yaml) and no other run holds it; True when removed."""
    from pantheon.utils import run_lock

    def leftover(path: Path) -> bool:
        return (
            path.relative_to(run_dir).parts[0] == ".hydra"
            or path.suffix == ".log"
            or path.name in (run_lock.LOCK_NAME, "hparams.yaml")
        )

    if not run_dir.is_dir() or run_dir.is_symlink():
        return False
    for folder, subfolders, files in os.walk(run_dir):
        names = [Path(folder) / name for name in [*subfolders, *files]]
        if any(path.is_symlink() for path in names):
            return False
        if not all(leftover(Path(folder) / name) for name in files):
            return False
    try:
        run_lock.check_run_dir_free(run_dir)  # another run holds it: its folder, not ours
    except UserError:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
