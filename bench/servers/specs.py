"""Server descriptions: the built-in python and zig servers and the custom ones of servers.toml.

Every server, built-in or not, is the same data (`ServerSpec`): a command, environment variables
per database and broker, where its API and health check answer, and optionally a build step and
a version command. The built-in ones are `bench/servers/builtin.toml`; a user's `servers.toml`
adds servers and overrides any built-in key or variable. `servers.toml.example` at the
repository's root documents every key and placeholder.

Standard library only: `bench.cells.matrix` (and through it noxfile.py) reads the server names here.
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config.dimensions import BROKERS, DBS
from bench.core.errors import ConfigError

SERVERS_FILE_ENV = "BENCH_SERVERS_FILE"
DEFAULT_SERVERS_FILE = "servers.toml"
BUILTIN_FILE = Path(__file__).resolve().parent / "builtin.toml"
# the runner's name for a server given by --url
RESERVED_NAMES = ("external",)

# Sections of a server's env table, applied in this order after its plain variables.
NO_SERVICES_SECTION = "no_services"
# the server started to seed a --preload (bench.preload), not measured
SEEDING_SECTION = "seeding"
# the server run under callgrind to count each request's cost (--cost)
COST_SECTION = "cost"
ENV_SECTIONS = (*DBS, *BROKERS, NO_SERVICES_SECTION, SEEDING_SECTION, COST_SECTION)

# Placeholders, by when they have a value (see servers.toml.example for their meaning).
ALWAYS = (
    "port",
    "host",
    "workdir",
    "sqlite_path",
    "python",
    "config_dir",
    "binary",
    "server_workers",
)
POSTGRES = ("db_url", "pg_host", "pg_port", "pg_user", "pg_password", "pg_database")
REDIS = (
    "redis_host",
    "redis_port",
    "redis_db",
    "redis_password",
    "redis_url",
)
PLACEHOLDERS = (*ALWAYS, *POSTGRES, *REDIS)
# A build or version command runs outside any cell: no port, no database.
OUTSIDE_CELL = ("python", "config_dir")
VERSION_PLACEHOLDERS = (*OUTSIDE_CELL, "binary")

_SERVER_KEYS = (
    "extends",
    "description",
    "command",
    "init_command",
    "services_command",
    "dbs",
    "brokers",
    "env",
    "api_path",
    "health_path",
    "startup_timeout_s",
    "no_services_args",
    "version_command",
    "binary",
    "build",
)
_BUILD_KEYS = ("command", "cwd", "timeout_s")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*(-[a-z0-9_]+)*$")


@dataclass(frozen=True)
class BuildSpec:
    """A command run before the server starts (it should be incremental: it runs per cell)."""

    command: tuple[str, ...]
    cwd: Path
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class ServerSpec:
    """One server, as data; `bench.servers.adapter.ServerAdapter` runs it."""

    name: str
    command: tuple[str, ...]
    # section ("" for always, else one of ENV_SECTIONS) → variable → template
    env: Mapping[str, Mapping[str, str]]
    config_dir: Path  # relative paths and {config_dir} refer to it
    description: str = ""
    api_path: str = "/api"
    health_path: str = "/api/health"
    startup_timeout_s: float = 120.0
    no_services_args: tuple[str, ...] | None = None
    # run to completion in the cell's environment before the server starts (its migrations,
    # when its processes must not each run them)
    init_command: tuple[str, ...] | None = None
    # a second process beside the server (its services: `prefect server services start`),
    # same environment, not started without services
    services_command: tuple[str, ...] | None = None
    # the cells it runs in; the others are skipped, saying why
    dbs: tuple[str, ...] = DBS
    brokers: tuple[str, ...] = BROKERS
    version_command: tuple[str, ...] | None = None
    binary: Path | None = None
    build: BuildSpec | None = None
    user_file: Path | None = field(default=None)  # the servers.toml that defined or changed it
    # the built-in server it is a variant of: its adapter runs it (python's holds its timers
    # still under --cost, reads prefect's version from the environment)
    extends: str | None = None

    def uses(self, placeholder: str) -> bool:
        """Whether any template of the server's start (command, env) uses `placeholder`."""
        templates = [*self.command, *(self.no_services_args or ())]
        templates += [*(self.init_command or ()), *(self.services_command or ())]
        templates += [v for section in self.env.values() for v in section.values()]
        return any(placeholder in fields(t) for t in templates)


def servers_file(path: Path | None = None) -> Path | None:
    """The servers.toml to read: `path`, else $BENCH_SERVERS_FILE, else ./servers.toml if any.

    ConfigError when a file that was asked for explicitly does not exist.
    """
    if path is None and (from_env := os.environ.get(SERVERS_FILE_ENV)):
        path = Path(from_env)
    if path is not None:
        path = path.expanduser()
        if not path.exists():
            raise ConfigError(f"servers file {path} does not exist")
        if not path.is_file():
            raise ConfigError(f"servers file {path} is not a file")
        return path.resolve()
    default = Path(DEFAULT_SERVERS_FILE)
    return default.resolve() if default.is_file() else None


def load_servers(path: Path | None = None) -> dict[str, ServerSpec]:
    """Every server by name: built-ins first, then the servers.toml's own, in file order."""
    builtin = _builtin_entries()
    specs = {
        name: _spec(name, entry, base=Path.cwd(), user_file=None) for name, entry in builtin.items()
    }
    user = servers_file(path)
    if user is None:
        return specs
    for name, entry in _entries(_read(user), user).items():
        where = f"{user}: [servers.{name}]"
        _check_keys(entry, _SERVER_KEYS, where)
        if name in specs:
            merged = _merge(builtin[name], entry)
            specs[name] = _spec(name, merged, user.parent, user)
        else:
            entry = _extended(entry, builtin, where)
            if "command" not in entry:
                raise ConfigError(f"{where} has no command (a list: program and arguments)")
            specs[name] = _spec(name, entry, user.parent, user)
    return specs


def load_builtin(name: str) -> ServerSpec:
    """A built-in server as bench/servers/builtin.toml describes it, without any servers.toml."""
    return _spec(name, _builtin_entries()[name], base=Path.cwd(), user_file=None)


def _builtin_entries() -> dict[str, dict[str, Any]]:
    """The built-in entries, each `extends` resolved."""
    raw = _entries(_read(BUILTIN_FILE), BUILTIN_FILE)
    return {name: _extended(e, raw, f"{BUILTIN_FILE}: [servers.{name}]") for name, e in raw.items()}


def _extended(
    entry: Mapping[str, Any], bases: Mapping[str, Mapping[str, Any]], where: str
) -> dict[str, Any]:
    """`entry` on top of the built-in server it `extends` (merged as a servers.toml's change
    to it is), or as it is when it extends none."""
    if "extends" not in entry:
        return dict(entry)
    base_name = entry["extends"]
    base = bases.get(base_name) if isinstance(base_name, str) else None
    if base is None or "extends" in base:
        known = ", ".join(n for n, b in bases.items() if "extends" not in b)
        raise ConfigError(f"{where} extends {base_name!r}, not a built-in server ({known})")
    return _merge(base, dict(entry))  # `extends` kept: it chooses the server's adapter


def builtin_server_names() -> tuple[str, ...]:
    """The names of the built-in servers (python, zig), whatever servers.toml says."""
    return tuple(_entries(_read(BUILTIN_FILE), BUILTIN_FILE))


def server_names(path: Path | None = None) -> tuple[str, ...]:
    """The names of every server the matrix knows: python, zig, then servers.toml's own."""
    return tuple(load_servers(path))


def versioned_server_names(path: Path | None = None) -> tuple[str, ...]:
    """The servers whose start runs this environment's interpreter ({python}), and so the
    Prefect installed in it: those a run comparing Prefect versions runs once per version."""
    return tuple(name for name, spec in load_servers(path).items() if spec.uses("python"))


def builtin_versioned_server_names() -> tuple[str, ...]:
    """versioned_server_names of the built-in servers alone, whatever servers.toml says."""
    return tuple(name for name in builtin_server_names() if load_builtin(name).uses("python"))


def fields(template: str) -> list[str]:
    """The placeholder names a template uses ("{port}" → ["port"]); "{{" is a literal brace."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"bad template {template!r}: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is not None and (spec or conversion):
            raise ConfigError(f"bad template {template!r}: write {{{name}}}, no ! or :")
    return [name for _, name, _, _ in parsed if name is not None]


def render(template: str, values: Mapping[str, str], where: str, cell: str) -> str:
    """`template` with its placeholders replaced; ConfigError naming `where` if one has no value.

    `cell` says which cell it was rendered for, e.g. "a sqlite, memory cell".
    """
    for name in fields(template):
        if name not in values:
            raise ConfigError(f"{where} uses {{{name}}}, which {cell} does not have")
    return template.format_map(values)


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _entries(raw: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    _check_keys(raw, ("servers",), f"{path}:", kind="top-level key")
    servers = raw.get("servers", {})
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: servers must be a table ([servers.NAME])")
    for name, entry in servers.items():
        where = f"{path}: [servers.{name}]"
        if not _NAME.match(name) or name in RESERVED_NAMES:
            raise ConfigError(
                f"{where}: a server name is lowercase letters, digits, '_' and inner '-'"
                + (f", and not {name!r}" if name in RESERVED_NAMES else "")
            )
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
    return servers


def _check_keys(
    table: Mapping[str, Any], known: Iterable[str], where: str, kind: str = "key"
) -> None:
    known = tuple(known)
    for key in table:
        if key not in known:
            raise ConfigError(f"{where} unknown {kind} {key!r} (known: {', '.join(known)})")


def _merge(builtin: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    """The built-in entry with the user's keys: env variables one by one, other keys whole."""
    merged = dict(builtin)
    for key, value in user.items():
        if key == "env" and isinstance(value, dict):
            env = {k: dict(v) if isinstance(v, dict) else v for k, v in builtin["env"].items()}
            for var, val in value.items():
                if isinstance(val, dict) and isinstance(env.get(var, {}), dict):
                    env[var] = {**env.get(var, {}), **val}
                else:
                    env[var] = val
            merged["env"] = env
        else:
            merged[key] = value
    return merged


def _spec(name: str, entry: Mapping[str, Any], base: Path, user_file: Path | None) -> ServerSpec:
    where = f"{user_file or BUILTIN_FILE}: [servers.{name}]"
    _check_keys(entry, _SERVER_KEYS, where)
    if "command" not in entry:
        raise ConfigError(f"{where} has no command (a list: program and arguments)")
    command = _argv(entry["command"], f"{where} command", PLACEHOLDERS, base)
    no_services = entry.get("no_services_args")
    init = entry.get("init_command")
    services = entry.get("services_command")
    version = entry.get("version_command")
    build = entry.get("build")
    return ServerSpec(
        name=name,
        command=command,
        env=_env(entry.get("env", {}), f"{where[:-1]}.env]"),
        config_dir=base,
        description=_str(entry.get("description", ""), f"{where} description"),
        api_path=_path(entry.get("api_path", "/api"), f"{where} api_path", empty_ok=True),
        health_path=_path(entry.get("health_path", "/api/health"), f"{where} health_path"),
        startup_timeout_s=_seconds(
            entry.get("startup_timeout_s", 120.0), where, "startup_timeout_s"
        ),
        no_services_args=None
        if no_services is None
        else _argv(no_services, f"{where} no_services_args", PLACEHOLDERS, base, program=False),
        init_command=None
        if init is None
        else _argv(init, f"{where} init_command", PLACEHOLDERS, base),
        services_command=None
        if services is None
        else _argv(services, f"{where} services_command", PLACEHOLDERS, base),
        dbs=_names(entry.get("dbs", list(DBS)), DBS, f"{where} dbs"),
        brokers=_names(entry.get("brokers", list(BROKERS)), BROKERS, f"{where} brokers"),
        version_command=None
        if version is None
        else _argv(version, f"{where} version_command", VERSION_PLACEHOLDERS, base),
        binary=None if "binary" not in entry else _file(entry["binary"], f"{where} binary", base),
        build=None if build is None else _build(build, f"{where[:-1]}.build]", base),
        user_file=user_file,
        extends=entry.get("extends"),
    )


def _names(value: Any, known: tuple[str, ...], where: str) -> tuple[str, ...]:
    """A non-empty list of some of `known` (dbs, brokers)."""
    if not isinstance(value, list) or not value or not all(v in known for v in value):
        raise ConfigError(f"{where} must be a non-empty list of {', '.join(known)}, got {value!r}")
    return tuple(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _templates(value: str, where: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    try:
        names = fields(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for name in names:
        if name not in allowed:
            raise ConfigError(
                f"{where}: unknown placeholder {{{name}}} in {value!r} "
                f"(known here: {', '.join('{' + a + '}' for a in allowed)}; "
                "write {{ and }} for literal braces)"
            )
    return value


def _argv(
    value: Any, where: str, allowed: Iterable[str], base: Path, *, program: bool = True
) -> tuple[str, ...]:
    """A list of templates; with `program`, a non-empty one whose first item is the program."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    if not value and program:
        raise ConfigError(f"{where} is empty: it needs at least the program")
    argv = [_templates(v, where, allowed) for v in value]
    # a relative program path is relative to the file's folder, not to the server's temp folder
    if program and "/" in argv[0] and not argv[0].startswith(("/", "{", "~")):
        argv[0] = str(base / argv[0])
    return tuple(argv)


def _path(value: Any, where: str, *, empty_ok: bool = False) -> str:
    text = _str(value, where)
    if empty_ok and text == "":
        return text
    if not text.startswith("/"):
        raise ConfigError(f"{where} must start with '/', got {text!r}")
    return text.rstrip("/") if len(text) > 1 else text


def _seconds(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where} {what}: a number of seconds > 0 expected, got {value!r}")
    return float(value)


def _file(value: Any, where: str, base: Path) -> Path:
    return (base / Path(_str(value, where)).expanduser()).resolve()


def _env(value: Any, where: str) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table of variables")
    env: dict[str, dict[str, str]] = {"": {}}
    for key, val in value.items():
        if isinstance(val, dict):
            if key not in ENV_SECTIONS:
                raise ConfigError(
                    f"{where} unknown section {key!r} (known: {', '.join(ENV_SECTIONS)})"
                )
            section_where = f"{where[:-1]}.{key}]"
            env[key] = {var: _variable(v, f"{section_where} {var}") for var, v in val.items()}
        else:
            env[""][key] = _variable(val, f"{where} {key}")
    return env


def _variable(value: Any, where: str) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return _templates(value, where, PLACEHOLDERS)


def _build(value: Any, where: str, base: Path) -> BuildSpec:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table with a command")
    _check_keys(value, _BUILD_KEYS, where)
    if "command" not in value:
        raise ConfigError(f"{where} has no command (a list: program and arguments)")
    cwd = _templates(_str(value.get("cwd", "."), f"{where} cwd"), f"{where} cwd", ())
    return BuildSpec(
        command=_argv(value["command"], f"{where} command", OUTSIDE_CELL, base),
        cwd=(base / Path(cwd).expanduser()).resolve(),
        timeout_s=_seconds(value.get("timeout_s", 1800.0), where, "timeout_s"),
    )
