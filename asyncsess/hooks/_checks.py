"""The standard hooks' argument checks: intervals, steps, "exactly one of" pairs.

Messages keep TensorFlow's text where its hook raises one, then name the values
received, as every asyncsess message does ("Received: name=value").
"""

from __future__ import annotations

import numbers
from typing import Any

from .._tf import global_step_read


def check_number(
    name: str,
    value: Any,
    *,
    what: str = "a number",
    minimum: float | None = 0,
    integral: bool = False,
) -> None:
    """Reject *value* unless it is a number (an int if *integral*) >= *minimum*.

    A bool is not a number here. ``minimum=None`` checks only the type.

    Raises:
      TypeError: not a number: "{name} must be {what}. Received: ...".
      ValueError: below *minimum*: "{name} must be >= {minimum}. Received: ...".
    """
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}. Received: {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Received: {name}={value!r}")


def check_one_of(
    names: tuple[str, str],
    values: tuple[Any, Any],
    *,
    neither: str | None = None,
    both: str | None = None,
    what: str = "a number",
) -> None:
    """Exactly one of two numbers >= 0 given, the other None.

    The default texts are TensorFlow's `SecondOrStepTimer` ones with the hook's
    argument names; *neither* and *both* replace them where TF's hook has its own.

    Raises:
      ValueError: both or neither given, or the one given is negative.
      TypeError: the one given is not a number.
    """
    first, second = names
    received = f"Received: {first}={values[0]!r}, {second}={values[1]!r}"
    if values[0] is None and values[1] is None:
        text = neither or f"Either {first} or {second} should be provided."
        raise ValueError(f"{text} {received}")
    if values[0] is not None and values[1] is not None:
        text = both or f"Can not provide both {first} and {second}."
        raise ValueError(f"{text} {received}")
    for name, value in zip(names, values, strict=True):
        if value is not None:
            check_number(name, value, what=what)


def required_global_step(hook_name: str) -> Any:
    """The global-step read tensor *hook_name* needs (TF's text if there is none).

    Raises:
      RuntimeError: the default graph has no global step.
    """
    step = global_step_read()
    if step is None:
        raise RuntimeError(f"Global step should be created to use {hook_name}.")
    return step
