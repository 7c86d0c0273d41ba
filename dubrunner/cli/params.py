"""Building blocks of options: groups of options declared once, and the types of rates and
seconds (click's own let nan and inf through)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class OptionGroup:
    """Options several commands share, declared once and applied as one decorator.

    Without `gather`, a command receives each option as a parameter of its own. With it, the
    options named by `gather`'s parameters go to `gather` instead, and the command receives what
    it returns as `into` (nothing when `into` is None); any other option of the group still comes
    as a parameter of its own."""

    def __init__(
        self,
        *options: Callable[[Any], Any],
        gather: Callable[..., Any] | None = None,
        into: str | None = None,
    ) -> None:
        self.options = options
        self.gather = gather
        self.into = into

    def __call__(self, fn: F) -> F:
        decorated: Any = fn if self.gather is None else self._gathering(fn)
        for option in reversed(self.options):  # so that --help lists them in this order
            decorated = option(decorated)
        return decorated  # type: ignore[no-any-return]

    def _gathering(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        gather, into = self.gather, self.into
        assert gather is not None
        names = tuple(inspect.signature(gather).parameters)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = gather(**{name: kwargs.pop(name) for name in names})
            if into is not None:
                kwargs[into] = value
            return fn(*args, **kwargs)

        return wrapper


if TYPE_CHECKING:  # click makes ParamType generic at run time only from 8.2 on
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


MIN_RATE = 0.001  # requests per second: one every 17 minutes
MAX_RATE = 100_000.0


class RateType(_ParamType):
    """A number of requests per second within [MIN_RATE, MAX_RATE], or 'auto'."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "auto":
            return value
        try:
            rate = float(value)
        except (TypeError, ValueError):
            rate = math.nan
        if not (rate > 0 and math.isfinite(rate)):  # nan fails every comparison
            self.fail(f"{value!r} is neither a positive number nor 'auto'", param, ctx)
        if not MIN_RATE <= rate <= MAX_RATE:
            self.fail(
                f"{value!r} requests per second is out of range: give {MIN_RATE:g} to "
                f"{MAX_RATE:g}, or 'auto'",
                param,
                ctx,
            )
        return rate


class Seconds(click.FloatRange):
    """A finite number of seconds within [min, max]. click's FloatRange alone lets nan through
    (every comparison with it is false), and inf or 1e300 would overflow the clocks they meet."""

    name = "seconds"

    def __init__(self, min: float, max: float) -> None:
        super().__init__(min, max)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


HOUR = 3600.0
