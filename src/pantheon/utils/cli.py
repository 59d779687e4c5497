"""The key=value command lines of pantheon's small entry points (sample, export, ...): one parser, one --help.

    @dataclass
    class Options:
        ckpt: str | None = None  # the checkpoint to read (shown by --help)

    cfg = parse_key_values(sys.argv[1:], Options, prog="pantheon.sample", summary="Sample a trained model.")

`--help` / `-h` prints the usage and one line per key (its type, default and the comment after it in the
dataclass source) and exits 0. An unknown key (with the closest valid one suggested), a value of the wrong type,
a missing required key or an argument that is not key=value is a UserError: one `error:` line, exit code 2
(pantheon.utils.errors.exit_on_user_error).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import sys
import tokenize
import typing
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pantheon.utils.errors import UserError

T = TypeVar("T")

HELP_FLAGS = ("-h", "--help")


def closest(name: str, choices: typing.Iterable[str]) -> str | None:
    """The valid name closest to a mistyped one (difflib), or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean X?)' when a valid name is close to `name`, else ''."""
    match = closest(name, choices)
    return f" (did you mean {match}?)" if match else ""


def field_comments(options: type) -> dict[str, str]:
    """The `# comment` after each field of a dataclass, read from its source (empty when unavailable)."""
    try:
        source = inspect.getsource(options)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    for line in source.splitlines():
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip()
        if name.isidentifier() and "#" in stripped:
            try:
                tokens = list(tokenize.generate_tokens(io.StringIO(stripped).readline))
            except (tokenize.TokenError, SyntaxError):
                continue
            text = [t.string for t in tokens if t.type == tokenize.COMMENT]
            if text:
                comments[name] = text[0].lstrip("#").strip()
    return comments


def type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace(" | None", "").replace("Optional[", "").rstrip("]")


def help_text(options: type, prog: str, summary: str) -> str:
    """Usage line, summary and one line per key."""
    comments = field_comments(options)
    fields = dataclasses.fields(options)
    width = max(len(f.name) for f in fields) + 2
    lines = [f"usage: python -m {prog} key=value [key=value ...]", "", summary.strip(), "", "keys:"]
    for f in fields:
        default = "required" if f.default is MISSING or f.default == "???" else f"default {f.default!r}"
        note = comments.get(f.name, "")
        lines.append(f"  {f.name:<{width}}{type_name(f.type)}, {default}" + (f": {note}" if note else ""))
    return "\n".join(lines)


def parse_key_values(argv: list[str], options: type[T], prog: str, summary: str) -> T:
    """`key=value` arguments on top of the dataclass `options` (see the module docstring)."""
    if any(arg in HELP_FLAGS for arg in argv):
        print(help_text(options, prog, summary))
        raise SystemExit(0)
    names = [f.name for f in dataclasses.fields(options)]
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg or not key:
            raise UserError(
                f"argument {arg!r} is not key=value: pass e.g. {names[0]}=<value> (--help lists the keys)"
            )
        if key not in names:
            raise UserError(
                f"unknown key {key}{did_you_mean(key, names)}: valid keys are {', '.join(names)} (--help)"
            )
    cfg = OmegaConf.structured(options)
    for arg in argv:
        key, value = arg.split("=", 1)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([arg]))
        except OmegaConfBaseException as err:
            expected = type_name(next(f.type for f in dataclasses.fields(options) if f.name == key))
            raise UserError(
                f"{key}={value!r} is not a valid {expected}: pass {key}=<{expected}> (--help)"
            ) from err
    missing = [name for name in names if OmegaConf.is_missing(cfg, name)]
    if missing:
        raise UserError(f"missing {missing[0]}=<value> (--help lists the keys)")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def argv_or(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else list(argv)
