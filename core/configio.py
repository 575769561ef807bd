"""Reading YAML configs, applying `section.key=value` overrides, and validating with pydantic.

Shared by every config omnitune reads (run configs and the monitor's config), so that all of
them report errors the same way: one line per problem, each naming the dotted path of the
field, what was given and what was expected.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from omnitune.core.errors import ConfigError, UsageError

ModelT = TypeVar("ModelT", bound=BaseModel)


class Section(BaseModel):
    """Base for config sections: strict about unknown keys, assignment re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from `path`; an empty file is an empty mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value.

    The value is parsed as a YAML scalar or flow collection, so `train.max_steps=20` gives an
    int, `peft.target_modules=[q_proj,v_proj]` a list and `output_dir=/tmp/run` a string.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"override '{text}' is not of the form section.key=value")
    parts = key.split(".")
    if any(not p for p in parts):
        raise UsageError(f"override '{text}' has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b=value` override set, creating sections as needed."""
    result = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                path = ".".join(parts[: depth + 1])
                raise ConfigError(f"{path}: is a value, not a section; cannot set '{text}'")
            node = child
        node[parts[-1]] = value
    return result


def validate(model: type[ModelT], data: dict[str, Any], source: str = "config") -> ModelT:
    """Validate `data` against `model`, raising ConfigError with one line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [describe_error(error, model) for error in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_config(
    model: type[ModelT], path: str | Path, overrides: list[str] | None = None
) -> ModelT:
    """Read `path`, apply `overrides` and validate: the one way omnitune loads a config file."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate(model, data, source=str(path))


def describe_error(error: dict[str, Any], root: type[BaseModel], prefix: str = "") -> str:
    """One pydantic error as 'dotted.path: what is wrong', with a did-you-mean for unknown keys.

    `prefix` names where `root` sits in a larger config (e.g. 'data.options')."""
    raw = [str(part) for part in error["loc"]]
    loc, _ = _walk(root, raw)
    path = ".".join([prefix, *loc] if prefix else loc) or prefix or "(top level)"
    kind = error["type"]
    if kind == "unknown_choice":  # a section whose model a field picks: objective.name
        field = error["ctx"]["field"]
        chosen = error["input"].get(field)
        return f"{path}.{field}: unknown '{chosen}' (known: {error['ctx']['known']})"
    if kind == "extra_forbidden":
        known = _field_names(root, raw[:-1])
        hint = difflib.get_close_matches(raw[-1], known, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        listing = f" (known keys: {', '.join(sorted(known))})" if known and not hint else ""
        return f"{path}: unknown key{suggestion}{listing}"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and message.split(":", 1)[0].count(".") and not loc:
        return message
    if kind == "missing":
        return f"{path}: required field is missing"
    given = error.get("input")
    if isinstance(given, (str, int, float, bool)) and kind not in {"value_error"}:
        return f"{path}: {message} (got {given!r})"
    return f"{path}: {message}"


def _walk(root: type[BaseModel], loc: list[str]) -> tuple[list[str], Any]:
    """Follow `loc` through `root`'s nested models: the path as the user wrote it (pydantic
    puts the tag of a section chosen by one of its fields, objective: {name: dpo, ...}, into
    the location after the section's name) and the model reached (None past a plain field)."""
    model: Any = root
    path: list[str] = []
    parts = iter(loc)
    for part in parts:
        path.append(part)
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            model = None
            continue
        members = _tagged_members(fields[part].annotation)
        if not members:
            model = _unwrap_model(fields[part].annotation)
            continue
        tag = next(parts, None)
        if tag is None:  # the section itself: its first member stands for the fields
            model = _unwrap_model(fields[part].annotation)
        elif tag in members:
            model = members[tag]
        else:  # not a tag after all: keep it
            path.append(tag)
            model = None
    return path, model


def _tagged_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """A tagged union's members by tag (`Annotated[Model, Tag(name)]` arguments)."""
    members = {}
    for arg in getattr(annotation, "__args__", ()) or ():
        for meta in getattr(arg, "__metadata__", ()):
            if type(meta).__name__ == "Tag":
                members[meta.tag] = arg.__origin__
    return members


def _field_names(root: type[BaseModel], loc: list[str]) -> list[str]:
    """Names of the fields of the model at `loc` inside `root`."""
    fields = getattr(_walk(root, loc)[1], "model_fields", None)
    return list(fields) if fields else []


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None
