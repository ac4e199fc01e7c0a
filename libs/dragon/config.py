"""Typed configuration from environment variables.

Every service builds one frozen config object at start-up with :func:`load`.
A setting is a dataclass field declared with :func:`setting`, which records the
environment variable, the unit and a one-line description; :func:`settings_table`
turns the same declarations into the documented table, so code and docs cannot
drift apart. Sections (``MqttSettings``, ``RedisSettings``) nest as fields whose
type is another config dataclass.

Secrets are never required in the plain environment: for a setting marked
``secret=True`` the loader also reads ``<ENV>_FILE`` (the Docker secrets
convention) and ``/run/secrets/<env lower-case>``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "DRAGON_"
# The build, setup and CI scripts' own variables (README, "Configuration"): exported in a shell,
# they must not stop the services and the command line as unknown settings.
SCRIPT_VARIABLES = (
    "DRAGON_ALLOW_CUDA_TORCH",
    "DRAGON_CI_PYTEST_ARGS",
    "DRAGON_CI_SKIP_TESTS",
    "DRAGON_IMAGES",
    "DRAGON_VENV",
    "DRAGON_WHEEL_EXTRA_ARCHES",
)
SECRETS_DIR = Path("/run/secrets")


class ConfigError(ValueError):
    """A setting is missing, malformed or unknown; the message names it."""


def setting(env: str, default: Any, help: str, unit: str = "", secret: bool = False) -> Any:
    """Declare a config field bound to environment variable ``env``."""
    metadata = {"env": env, "help": help, "unit": unit, "secret": secret}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults so configs stay immutable")
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    """Declare a nested config section (another config dataclass)."""
    return dataclasses.field(default_factory=cls, metadata={"section": True})


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean (true/false), got {raw!r}")


def comma_list(raw: str) -> tuple[str, ...]:
    """``a, b,,c`` -> ("a", "b", "c"): comma-separated items, blanks dropped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


_PARSERS: dict[Any, typing.Callable[[str], Any]] = {
    str: str,
    int: int,
    float: float,
    bool: _parse_bool,
    tuple[str, ...]: comma_list,
}


def _read_secret(env: str, environ: Mapping[str, str]) -> str | None:
    file_var = environ.get(f"{env}_FILE")
    candidates = [Path(file_var)] if file_var else []
    candidates.append(SECRETS_DIR / env.lower())
    for path in candidates:
        if path.is_file():
            return path.read_text().strip()
    if file_var:
        raise ConfigError(f"{env}_FILE points to {file_var!r}, which is not a readable file")
    return None


def _field_value(field: dataclasses.Field, hint: Any, environ: Mapping[str, str]) -> Any:
    env = field.metadata["env"]
    raw = environ.get(env)
    if raw is None and field.metadata["secret"]:
        raw = _read_secret(env, environ)
    if raw is None:
        return field.default
    parser = _PARSERS.get(hint)
    if parser is None:
        raise TypeError(f"no parser for the type of {env}: {hint!r}")
    try:
        return parser(raw)
    except ValueError as exc:
        raise ConfigError(f"{env}={raw!r} is not a valid {getattr(hint, '__name__', hint)}: {exc}") from exc


def load(cls: type, environ: Mapping[str, str] | None = None, known: Iterable[str] = ()) -> Any:
    """Build ``cls`` from ``environ`` (default ``os.environ``).

    ``known`` lists further ``DRAGON_*`` variables that are valid elsewhere (other
    services share the same env file); any other unknown ``DRAGON_*`` variable is
    rejected so that a typo never silently falls back to a default.
    """
    environ = os.environ if environ is None else environ
    accepted = set(known) | set(env_names(cls))
    accepted |= {f"{name}_FILE" for name in accepted} | set(SCRIPT_VARIABLES)
    unknown = sorted(key for key in environ if key.startswith(ENV_PREFIX) and key not in accepted)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)} (see the configuration table in README.md)")
    return _build(cls, environ)


def _build(cls: type, environ: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.metadata.get("section"):
            values[field.name] = _build(hints[field.name], environ)
        else:
            values[field.name] = _field_value(field, hints[field.name], environ)
    config = cls(**values)
    # Each section checks its own invariants (``validate``), inner sections first.
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def _leaf_fields(cls: type) -> Iterable[dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("section"):
            yield from _leaf_fields(hints[field.name])
        else:
            yield field


def default_of(cls: type, name: str) -> Any:
    """The default of setting ``name`` of ``cls``: for tools that run a service's logic outside it."""
    for field in dataclasses.fields(cls):
        if field.name == name and not field.metadata.get("section"):
            return field.default
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def env_names(cls: type) -> list[str]:
    """Every environment variable that ``cls`` reads."""
    return [field.metadata["env"] for field in _leaf_fields(cls)]


def settings_table(classes: Iterable[type]) -> str:
    """A Markdown table of every setting of ``classes`` (shared sections once)."""
    rows, seen = [], set()
    for cls in classes:
        for field in _leaf_fields(cls):
            env = field.metadata["env"]
            if env in seen:
                continue
            seen.add(env)
            default, meaning = _show_default(field.default), field.metadata["help"]
            if field.metadata["secret"]:
                default = "(none: a secret)"
                meaning += f"; or read from the file `{env}_FILE` names, or `{SECRETS_DIR / env.lower()}`"
            rows.append(f"| `{env}` | {default} | {field.metadata['unit']} | {meaning} |")
    header = "| variable | default | unit | meaning |\n| --- | --- | --- | --- |"
    return "\n".join([header, *rows])


def _show_default(value: Any) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, tuple):
        value = ",".join(value)
    if value == "":
        return "(empty)"
    return f"`{value}`"


def redacted(config: Any) -> dict[str, Any]:
    """The config as a plain dict with secrets replaced, safe to log or print."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.metadata.get("section"):
            out[field.name] = redacted(value)
        elif field.metadata.get("secret") and value:
            out[field.name] = "***"
        else:
            out[field.name] = value
    return out
