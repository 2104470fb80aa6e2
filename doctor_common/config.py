"""TOML configuration with errors that name the file and the key.

Each daemon parses its file into frozen dataclasses at start-up; ``Section``
is the small typed reader they share. Unknown keys are errors too, so a typo
fails loudly instead of silently falling back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING: Any = object()


class ConfigError(Exception):
    """A configuration file is unreadable or a key in it is wrong."""

    def __init__(self, path: Path | str, key: str, message: str) -> None:
        self.path = str(path)
        self.key = key
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


class Section:
    """A table of a TOML file, read key by key with types checked."""

    def __init__(self, path: Path, data: dict[str, Any], prefix: str = "") -> None:
        self.file = path
        self.data = data
        self.prefix = prefix
        self._seen: set[str] = set()

    @classmethod
    def load(cls, path: Path | str) -> "Section":
        p = Path(path)
        try:
            with p.open("rb") as f:
                return cls(p, tomllib.load(f))
        except FileNotFoundError:
            raise ConfigError(p, "", "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(p, "", f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(p, "", f"cannot read: {exc.strerror}") from None

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def _get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, "is required")
            return default
        value = self.data[name]
        # bool is an int in Python; a flag is not a number
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
        return value

    def str(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, str, default)

    def bool(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, bool, default)

    def int(self, name: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None) -> Any:
        value = self._get(name, int, default)
        if value is not None and value is not default:
            if min is not None and value < min:
                raise self.error(name, f"must be at least {min}, got {value}")
            if max is not None and value > max:
                raise self.error(name, f"must be at most {max}, got {value}")
        return value

    def float(self, name: str, default: Any = _MISSING, *, min: float | None = None,
              max: float | None = None) -> Any:
        value = self._get(name, (int, float), default)
        if value is not None and value is not default:
            value = float(value)
            if min is not None and value < min:
                raise self.error(name, f"must be at least {min}, got {value}")
            if max is not None and value > max:
                raise self.error(name, f"must be at most {max}, got {value}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.str(name, default)
        if value is not default and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def str_list(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, list, default)
        if value is not default:
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise self.error(f"{name}[{i}]", f"expected a string, got {item!r}")
            value = list(value)
        return value

    def path(self, name: str, default: Any = _MISSING) -> Any:
        """A path; relative paths are relative to the config file's directory."""
        value = self.str(name, default)
        if isinstance(value, str):
            p = Path(value)
            return p if p.is_absolute() else (self.file.parent / p)
        return value

    def secret(self, name: str) -> str | None:
        """``name`` inline or ``name_file`` pointing at a file holding it (never on a command line)."""
        inline = self.str(name, None)
        file = self.path(f"{name}_file", None)
        if inline is not None and file is not None:
            raise self.error(name, f"give either {name} or {name}_file, not both")
        if file is not None:
            try:
                mode = file.stat().st_mode & 0o777
                if mode & 0o077:
                    raise self.error(f"{name}_file", f"{file} is open to group or others (mode {mode:04o}): chmod 600 "
                                                     "it; a secret must be readable by its owner only, as ssh "
                                                     "requires of a private key")
                return file.read_text().strip()
            except OSError as exc:
                raise self.error(f"{name}_file", f"cannot read {file}: {exc.strerror}") from None
        return inline

    def section(self, name: str, *, required: bool = False) -> "Section":
        value = self._get(name, dict, _MISSING if required else {})
        return Section(self.file, value, f"{self.key(name)}.")

    def sections(self, name: str) -> list["Section"]:
        """An array of tables (``[[name]]``)."""
        value = self._get(name, list, [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", "expected a table")
            out.append(Section(self.file, item, f"{self.key(name)}[{i}]."))
        return out

    def table(self, name: str) -> dict[str, "Section"]:
        """A table of tables keyed by name (``[name.foo]``, ``[name.bar]``)."""
        value = self._get(name, dict, {})
        out = {}
        for k, item in value.items():
            if not isinstance(item, dict):
                raise self.error(f"{name}.{k}", "expected a table")
            out[k] = Section(self.file, item, f"{self.key(name)}.{k}.")
        return out

    def raw(self) -> dict[str, Any]:
        self._seen.update(self.data)
        return self.data

    def done(self) -> None:
        """Fail on keys nobody read: a typo must not pass as a default."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key" + (f" (also: {', '.join(unknown[1:])})" if unknown[1:] else ""))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
    if isinstance(kind, tuple):
        return names.get(float) if float in kind else " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)
