"""Options built from the dataclasses (or functions) they fill: defaults defined once.

1. :func:`config_option` makes a click option for one field of a config dataclass
   (or one parameter of a function): its default is the field's default, its help
   the field's line in the class docstring's ``Attributes:`` (or ``Args:``) section,
   unless the option gives its own. Passing ``default=`` is refused, so a default
   cannot be written twice.
2. The option remembers its source (:class:`ConfigOption`), so
   :func:`config_values` turns a command's keyword arguments back into the
   dataclass's fields, and a test can walk every command and check each default
   against its source.
3. :func:`placement_options` adds the :class:`circuitray.jobs.dispatch.Placement`
   options that every job command shares.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any

import click

__all__ = [
    "ConfigOption",
    "config_option",
    "config_values",
    "field_default",
    "field_help",
    "placement_options",
]


class ConfigOption(click.Option):
    """A click option whose default comes from ``source = (owner, field name)``."""

    def __init__(self, *args: Any, source: tuple[Any, str], **kwargs: Any):
        self.source = source
        super().__init__(*args, **kwargs)


def field_default(owner: Any, name: str) -> Any:
    """The default of dataclass field ``name`` of ``owner``, or of parameter ``name`` of
    the function ``owner``. Raises KeyError for a field that has none."""
    label = owner.__name__
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                raise KeyError(f"{label}.{name} has no default")
        raise KeyError(f"{label} has no field {name!r}")
    param = inspect.signature(owner).parameters[name]
    if param.default is inspect.Parameter.empty:
        raise KeyError(f"{owner.__name__}({name}) has no default")
    return param.default


def field_help(owner: Any, name: str) -> str | None:
    """The text after ``name:`` in the ``Attributes:`` / ``Args:`` section of
    ``owner``'s docstring, continuation lines joined; None where it has none."""
    doc = inspect.getdoc(owner) or ""
    m = re.search(rf"^(\s+){re.escape(name)}: (.*)$", doc, re.M)
    if not m:
        return None
    indent, text = len(m.group(1)), [m.group(2).strip()]
    for line in doc[m.end() :].splitlines()[1:]:
        if not line.strip() or len(line) - len(line.lstrip()) <= indent:
            break
        text.append(line.strip())
    return re.sub(r"``([^`]+)``", r"\1", " ".join(text))


def config_option(owner: Any, name: str, *decls: str, **kwargs: Any) -> Callable:
    """``click.option`` for field ``name`` of ``owner`` (see module docstring).

    ``decls`` default to ``--name-with-dashes``; the command receives the value under
    ``name`` unless ``decls`` name another parameter. A ``multiple`` option defaults to
    the field's items as a tuple (None: ``()``); a field without default needs ``required``.
    """
    if "default" in kwargs:
        raise TypeError(f"{name}: the default comes from {owner.__name__}, not the option")
    try:
        default = field_default(owner, name)
    except KeyError:
        if not kwargs.get("required"):
            raise
        default = None  # a required field: no default to take
    if not decls:
        decls = ("--" + name.replace("_", "-"), name)
    if kwargs.get("multiple"):
        default = tuple(default or ())
    kwargs.setdefault("help", field_help(owner, name))
    kwargs.setdefault("show_default", default not in (None, ()) and not kwargs.get("is_flag"))
    return click.option(*decls, cls=ConfigOption, source=(owner, name), default=default, **kwargs)


def config_values(owner: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the running command that fill ``owner``'s fields (its
    own options and those of its base classes), by field name."""
    out: dict[str, Any] = {}
    for p in click.get_current_context().command.params:
        if isinstance(p, ConfigOption) and p.name in values:
            src = p.source[0]
            if src is owner or (
                isinstance(owner, type) and isinstance(src, type) and issubclass(owner, src)
            ):
                out[p.source[1]] = values[p.name]
    return out


def placement_options(command: Callable) -> Callable:
    """Ray placement and retry options (:class:`Placement`) of the job commands."""
    from circuitray.jobs.dispatch import Placement

    options = [
        config_option(Placement, "actors", type=click.IntRange(min=1)),
        config_option(Placement, "address"),
        config_option(Placement, "gpus_per_actor", type=click.FloatRange(min=0, min_open=True)),
        config_option(Placement, "cpus_per_actor", type=click.FloatRange(min=0, min_open=True)),
        config_option(Placement, "batch_size", type=click.IntRange(min=1)),
        config_option(Placement, "max_attempts", type=click.IntRange(min=1)),
        config_option(Placement, "start_timeout_s", type=click.FloatRange(min=0, min_open=True)),
    ]
    for option in reversed(options):
        command = option(command)
    return command
