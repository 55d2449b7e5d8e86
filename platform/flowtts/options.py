"""Command-line options declared once, by the pydantic model of a job's settings.

``add_model_options`` turns each field into an option (``min_duration`` -> ``--min-duration``; the field's
description is the help, a ``Literal`` gives the choices, a bool is a flag, a dict is repeated ``KEY=VALUE``
pairs collected as strings for the job to parse; ``json_schema_extra={"flag": ..., "metavar": ...}`` renames
an option); options not given on the command line are left out, so the model's defaults and validators are
the only ones.
``model_from_args`` validates the parsed namespace with the model.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable

from pydantic import BaseModel

M = typing.TypeVar("M", bound=BaseModel)


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel], exclude: Iterable[str] = ()) -> None:
    skipped = set(exclude)
    for name, field in model.model_fields.items():
        if name in skipped:
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flag = str(extra.get("flag", "--" + name.replace("_", "-")))
        kind = _without_none(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = field.description or name
        help_text += " (required)" if field.is_required() else "" if default is None else f" (default {default})"
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=field.description)
        elif typing.get_origin(kind) is dict:
            parser.add_argument(
                flag,
                dest=name,
                action="append",
                default=argparse.SUPPRESS,
                metavar=extra.get("metavar"),
                help=help_text,
            )
        elif typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            parser.add_argument(flag, dest=name, choices=choices, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(
                flag, dest=name, required=field.is_required(), default=argparse.SUPPRESS, help=help_text
            )


def model_from_args(model: type[M], args: argparse.Namespace) -> M:
    """The model from the options that were given (pydantic converts the strings and checks them)."""
    return model.model_validate({k: v for k, v in vars(args).items() if k in model.model_fields})


def _without_none(annotation: object) -> object:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation
