"""One validator for every settings mapping, driven by dataclass field annotations.

PRACConfig, the DeepSpeed JSON "prac" section (and its "offload" object) and every section of
a prac-train YAML are dataclasses; `build(cls, mapping, where)` checks each key against the
fields and each value against the field's annotation, so a new field needs no validator code:

    bool, int, float, str          exact types (bool is never an int; an int is accepted as a float)
    Literal["a", "b"]              one of the listed values
    Optional[X]                    null or X
    List[X], Tuple[X, ...]         a list (a single string counts as a list of one for List[str])
    Tuple[X, Y]                    a list of exactly that many
    Dict[str, Any]                 a mapping
    a dataclass                    a nested mapping, built the same way

Errors are `ConfigError` (a ValueError) naming `where.field`, the value and what is accepted; an
unknown key names the nearest accepted one (difflib). Value ranges and cross-field rules stay in
each dataclass's `__post_init__` / validate step: they are not types.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Dict, Iterable, Literal, Mapping, Tuple, Union

__all__ = ["ConfigError", "build", "check_fields", "unknown_key"]


class ConfigError(ValueError):
    """Bad user input (config, data, paths): prac-train prints it on one line and exits with status 2."""


# PyYAML (YAML 1.1) reads `3e-4` and `1.0e3` (no dot, or no exponent sign) as strings, though they are
# meant as numbers; a quoted '0.3' without an exponent is a deliberate string and stays an error.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_AUTO_HINT = ("'auto' is not accepted here; give an explicit value "
              "(prac_dist resolves no 'auto' values, and Accelerate rejects ones it does not know)")


def unknown_key(where: str, key: Any, accepted: Iterable[str]) -> ConfigError:
    """'where.key: unknown key; did you mean X?' (all accepted keys only when none is close)."""
    accepted = sorted(accepted)
    close = difflib.get_close_matches(str(key), accepted, n=1, cutoff=0.6)
    name = f"{where}.{key}" if where else str(key)
    if close:
        return ConfigError(f"{name}: unknown key; did you mean {close[0]!r}?")
    return ConfigError(f"{name}: unknown key; accepted keys are {accepted}")


def build(cls, data: Any, where: str, extra: Iterable[str] = ()):
    """`cls(**data)` after checking every key and value; `extra` keys are the caller's and are skipped."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}={data!r}: expected a mapping of {cls.__name__} fields")
    hints = _hints(cls)
    extra = tuple(extra)
    values = {}
    for key, value in data.items():
        if key in extra:
            continue
        if key not in hints:
            raise unknown_key(where, key, list(hints) + list(extra))
        values[key] = check(value, hints[key], f"{where}.{key}")
    return cls(**values)


def check_fields(obj: Any, where: str) -> None:
    """Check (and normalise: list -> tuple, int -> float) every field of a dataclass instance in place.

    Called from `__post_init__`, so objects built in Python get the same checks as mappings.
    """
    for name, hint in _hints(type(obj)).items():
        value = getattr(obj, name)
        checked = check(value, hint, f"{where}.{name}")
        if checked is not value:
            object.__setattr__(obj, name, checked)  # also works on frozen dataclasses


def check(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against the annotation `hint`, converted where the conversion loses nothing."""
    ok, out = _match(value, hint, where)
    if ok:
        return out
    if value == "auto" and isinstance(value, str):
        raise ConfigError(f"{where}='auto': {_AUTO_HINT}")
    accepted = describe(hint)
    if _literal_values(hint) and _same_kind(value, hint):
        raise ConfigError(f"{where}={value!r}: accepted is {accepted}")
    hint_text = ""
    if isinstance(value, bool) and _wants_string(hint):
        # YAML 1.1 reads an unquoted off/on/no/yes as a boolean before we ever see the word.
        field = where.rsplit(".", 1)[-1]
        hint_text = f' (YAML turns an unquoted off/on/no/yes into {value}: quote the word, e.g. {field}: "off")'
    raise ConfigError(f"{where}={value!r} has the wrong type ({type(value).__name__}): "
                      f"accepted is {accepted}{hint_text}")


def describe(hint: Any) -> str:
    """Words for what an annotation accepts, as errors print it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        inner = [describe(a) for a in args if a is not type(None)]
        return ("null or " if type(None) in args else "") + " or ".join(inner)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (list, tuple) and (origin is list or (len(args) == 2 and args[1] is Ellipsis)):
        return f"a list of {_plural(describe(args[0]))}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(describe(args[0]))}"
    if origin is dict or hint is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _match(value: Any, hint: Any, where: str) -> Tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin is Union:
        if value is None:
            return type(None) in args, None
        for arg in args:
            if arg is not type(None):
                ok, out = _match(value, arg, where)
                if ok:
                    return ok, out
        return False, value
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):  # True is not 1, 1.0 is not 1
                return True, value
        return False, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return True, float(value)
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if origin is list:
        if isinstance(value, str) and args[0] is str:
            value = [value]  # one file is a list of one
        if not isinstance(value, (list, tuple)):
            return False, value
        return True, [check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        if len(args) == 2 and args[1] is Ellipsis:
            return True, tuple(check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            return False, value
        return True, tuple(check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return True, value
        if isinstance(value, Mapping):
            return True, build(hint, value, where)
        return False, value
    raise TypeError(f"{where}: the validator has no rule for the annotation {hint!r}")  # a programming error


def _hints(cls) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _literal_values(hint: Any) -> tuple:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) is Union:
        return tuple(v for a in typing.get_args(hint) for v in _literal_values(a))
    return ()


def _same_kind(value: Any, hint: Any) -> bool:
    """A value of the literals' own type (a wrong word, not a wrong type)."""
    return any(type(value) is type(choice) for choice in _literal_values(hint))


def _wants_string(hint: Any) -> bool:
    if hint is str:
        return True
    if typing.get_origin(hint) is Union:
        return any(_wants_string(a) for a in typing.get_args(hint))
    return any(isinstance(v, str) for v in _literal_values(hint))


def _plural(words: str) -> str:
    for single, plural in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                           ("true or false", "booleans")):
        if words == single:
            return plural
    return words
