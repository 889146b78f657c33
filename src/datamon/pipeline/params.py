"""Typed task parameters, declared as class attributes as in luigi.

``n = IntParameter(default=3)`` on a task class; ``Task(n=5)`` sets it and ``self.n`` reads
it as an ``int``. Every value must be JSON-serialisable, because it is hashed into the
fingerprint and written to the run record and the output bundle; a value that is not is a
:class:`~datamon.errors.ParameterError` when the task is made, before anything runs.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any, Generic, TypeVar, overload

from datamon.errors import InvalidArgument

T = TypeVar("T")


class _Missing(enum.Enum):
    MISSING = 0


MISSING = _Missing.MISSING
"""The default of a parameter that has none: the task must be given a value."""


class Parameter(Generic[T]):
    """A parameter holding any JSON value (None, bool, int, float, str, list, dict).

    ``significant=False`` keeps it out of the fingerprint and the task's identity, as in
    luigi: use it for settings that cannot change the output (verbosity, thread counts).
    """

    type_name = "JSON value"

    def __init__(
        self,
        default: T | _Missing = MISSING,
        *,
        significant: bool = True,
        description: str = "",
    ) -> None:
        self.default = default
        self.significant = significant
        self.description = description
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Parameter[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> Parameter[T] | T:
        if obj is None:
            return self
        values: dict[str, Any] = obj.__dict__["_param_values"]
        value: T = values[self.name]
        return value

    def normalize(self, value: object) -> T:
        """The stored form of ``value``; InvalidArgument says why it is refused."""
        normal: T = json_value(value)
        return normal

    def parse(self, text: str) -> T:
        """The value of a command-line string (JSON for this base type, else a plain string)."""
        try:
            decoded: object = json.loads(text)
        except ValueError:
            decoded = text
        return self.normalize(decoded)


class IntParameter(Parameter[int]):
    type_name = "int"

    def normalize(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"expected an int, got {_describe(value)}")
        return int(value)

    def parse(self, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise InvalidArgument(f"expected an int, got {text!r}") from None


class FloatParameter(Parameter[float]):
    type_name = "float"

    def normalize(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"expected a float, got {_describe(value)}")
        result = float(value)
        if not math.isfinite(result):
            raise InvalidArgument(f"{result} is not JSON-serialisable")
        return result

    def parse(self, text: str) -> float:
        try:
            return self.normalize(float(text))
        except ValueError:
            raise InvalidArgument(f"expected a float, got {text!r}") from None


class StrParameter(Parameter[str]):
    type_name = "str"

    def normalize(self, value: object) -> str:
        if not isinstance(value, str):
            raise InvalidArgument(f"expected a str, got {_describe(value)}")
        return value

    def parse(self, text: str) -> str:
        return text


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class BoolParameter(Parameter[bool]):
    type_name = "bool"

    def normalize(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise InvalidArgument(f"expected a bool, got {_describe(value)}")
        return value

    def parse(self, text: str) -> bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise InvalidArgument(f"expected true or false, got {text!r}")


class ListParameter(Parameter[list[Any]]):
    """A list (tuples are accepted) of JSON values; stored as a list."""

    type_name = "list"

    def normalize(self, value: object) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise InvalidArgument(f"expected a list, got {_describe(value)}")
        result: list[Any] = json_value(value)
        return result


class DictParameter(Parameter[dict[str, Any]]):
    """A dict with string keys and JSON values."""

    type_name = "dict"

    def normalize(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InvalidArgument(f"expected a dict, got {_describe(value)}")
        result: dict[str, Any] = json_value(value)
        return result


def json_value(value: object, where: str = "value") -> Any:
    """A deep copy of ``value`` made of plain JSON types; InvalidArgument if it has others."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{where} {value} is not JSON-serialisable")
        return value
    if isinstance(value, list | tuple):
        return [json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgument(f"{where} has a key {k!r} that is not a string")
            result[k] = json_value(v, f"{where}[{k!r}]")
        return result
    raise InvalidArgument(f"{where} of type {type(value).__name__} is not JSON-serialisable")


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
