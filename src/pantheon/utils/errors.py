"""User-facing errors: one clear line, a nonzero exit, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """Bad input the user can fix: a path, a key, a value. The message names what is wrong and how to fix it."""


def require_choice(key: str, value: object, choices) -> None:
    """A config value that must be one of a few names: one line naming the key and the valid choices."""
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {'|'.join(choices)}")


def find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`: itself, or the cause a wrapper chained to it (hydra.utils.instantiate
    raises InstantiationException from the constructor's error)."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None


def exit_on_user_error(func: F) -> F:
    """Turn a UserError escaping an entry point into `error: <message>` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            print(f"error: {user_error}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper  # type: ignore[return-value]
