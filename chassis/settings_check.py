"""Bad settings stop a process at start with one line that names the setting (the `CCE_*` variable), not a traceback:
an unknown value (a network mode that does not exist), a value that does not parse, an unreadable `CCE_CONFIG_FILE`,
or a credentials / TLS / kubeconfig file that a setting names but that is not there."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings import SettingsError as PydanticSettingsError

S = TypeVar("S", bound=BaseSettings)

# Settings that name a file the process reads at start: when set, the file must be there and readable.
REQUIRED_FILES = ("nats_creds", "nats_tls_ca", "nats_tls_cert", "nats_tls_key", "kubeconfig")
CONFIG_FILE_ENV = "CCE_CONFIG_FILE"
EXIT_BAD_SETTINGS = 2


class SettingsError(Exception):
    """A setting the process cannot start with; the message names it."""


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    prefix = str(settings_cls.model_config.get("env_prefix") or "")
    return f"{prefix}{field}".upper()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(settings_cls: type[BaseSettings], err: ValidationError) -> str:
    """`CCE_DEFAULT_MODE='bogus': Input should be 'vpc-eni', ...` for each error (the variable, not the field)."""
    parts = []
    for e in err.errors(include_url=False):
        loc = [str(p) for p in e["loc"]]
        name = env_name(settings_cls, loc[0]) if loc else "settings"
        where = name + "".join(f"[{p}]" for p in loc[1:])
        given = f"={_shown(e['input'])}" if loc and not isinstance(e.get("input"), dict) else ""
        parts.append(f"{where}{given}: {e['msg']}")
    return "; ".join(parts)


def check_files(settings: BaseSettings) -> None:
    for field in REQUIRED_FILES:
        value = getattr(settings, field, None)
        if value is None:
            continue
        path = Path(value)
        name = env_name(type(settings), field)
        if not path.is_file():
            raise SettingsError(f"{name}={str(path)!r}: no such file" if not path.exists()
                                else f"{name}={str(path)!r}: not a file")
        if not os.access(path, os.R_OK):
            raise SettingsError(f"{name}={str(path)!r}: not readable by uid {os.getuid()}")


def load_settings(settings_cls: type[S]) -> S:
    """The process's settings (environment and `CCE_CONFIG_FILE`), or SettingsError naming what is wrong."""
    try:
        settings = settings_cls()
    except ValidationError as err:
        raise SettingsError(describe(settings_cls, err)) from None
    except PydanticSettingsError as err:  # a complex value (JSON) that does not parse
        match = re.search(r'field "([^"]+)"', str(err))
        name = env_name(settings_cls, match.group(1)) if match else "a setting"
        cause = f": {err.__cause__}" if err.__cause__ else ""
        raise SettingsError(f"{name}: cannot be parsed{cause}") from None
    except OSError as err:  # only the settings file is read while settings load
        path = os.environ.get(CONFIG_FILE_ENV, "")
        raise SettingsError(f"{CONFIG_FILE_ENV}={path!r}: {err.strerror or err}") from None
    except ValueError as err:  # the settings file is not YAML/JSON or not a mapping
        raise SettingsError(f"{CONFIG_FILE_ENV}={os.environ.get(CONFIG_FILE_ENV, '')!r}: {err}") from None
    check_files(settings)
    return settings
