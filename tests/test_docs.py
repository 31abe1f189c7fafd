"""The docs tell the truth: every command line in the README and the guide is one the real CLI
(and nox's real session list) accepts, every option they name exists, every environment
variable the code reads is documented (and none it does not), and the example files load.

The design notes are left out: they are the record of decisions, where a removed option
rightly stays as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bench.cli import _config, _matrix_config, build_parser
from bench.core.errors import BenchError
from bench.servers.specs import load_servers
from tests.helpers import ROOT

DOCS = [
    ROOT / "README.md",
    *(p for p in sorted((ROOT / "docs").rglob("*.md")) if p.name != "design-notes.md"),
]
# The README is the front door: what it cannot say in this many bytes belongs in the guide.
README_LIMIT = 12 * 1024
# What a command line in the docs starts with, after any VAR=value words.
PROGRAMS = (("python", "-m", "bench"), ("prefect-bench",), ("nox",))
# Options the docs name of other programs than prefect-bench, and whose they are.
FOREIGN = {
    "--workers": "prefect server start",
    "--host": "prefect server start",
    "--port": "prefect server start",
    "--type": "prefect worker start",
    "--run-once": "prefect worker start",
    "--nonblocking": "py-spy",
    "--subprocesses": "py-spy",
    "--format": "py-spy",
    "--nox": "scripts/fan_out.py",
    "--envdir": "nox",
    "--no-venv": "nox",
    "--no-install": "nox",
    "--tool": "valgrind",
    "--instr-atstart": "valgrind",
    "--callgrind-out-file": "valgrind",
    "--toggle-collect": "valgrind",
    "--pid": "vgdb",
    "--max-invoke-ms": "vgdb",
    "--inclusive": "callgrind_annotate",
    "--call-graph": "perf record",
    "--exclude-newer": "uv",
    "--no-owner": "pg_restore",
    "--no-privileges": "pg_restore",
    "--exit-on-error": "pg_restore",
    "--no-checkout": "git",
    "--headless": "chromium",
    "--screenshot": "chromium",
    "--listen": "redis-server",
    "--limit": "the UI's reads",
    "--pool": "prefect worker start",
    "--nolineno": "py-spy",
    "--strict": "mkdocs build",
    "--site-dir": "mkdocs build",
    "--dev-addr": "mkdocs serve",
    "--durations": "pytest",
}


def code_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of `path`'s fenced code blocks, a line ending in `\\` joined to the next."""
    found: list[tuple[int, str]] = []
    fenced, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    return found


def commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """Every command line of the docs that runs prefect-bench or nox: where, the variables it
    sets, and its words from the program's name on (`python run ...`, `nox -s ...`)."""
    found = []
    for path in DOCS:
        for number, line in code_lines(path):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            for program in PROGRAMS:
                if tuple(words[: len(program)]) == program:
                    where = f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                    found.append((where, env, [*program[:1], *words[len(program) :]]))
    return found


def parse(words: list[str]) -> str | None:
    """Why the real CLI refuses `words` (run, matrix, doctor: their configuration too), or
    None: as `bench.cli.main` reads them (matrix and doctor give the cells what they do not
    know themselves)."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args, rest = build_parser().parse_known_args(words)
            if rest and args.command not in ("matrix", "doctor"):
                return f"unrecognized arguments: {' '.join(rest)}"
            if args.command == "run":
                _config(args)
            if args.command == "doctor" or (args.command == "matrix" and not args.resume):
                _matrix_config(rest)
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1]
    except BenchError as exc:
        return str(exc)
    return None


@functools.cache
def sessions(env: tuple[tuple[str, str], ...] = ()) -> frozenset[str]:
    """The sessions `nox -l` lists with the variables `env` set (PREFECT_VERSION adds some)."""
    if shutil.which("nox") is None:
        pytest.skip("nox is not installed")
    environ = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | dict(env)
    out = subprocess.run(
        ["nox", "-l"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    # "* matrix -> …" (selected by default) and "- tests -> …": every session of the noxfile
    return frozenset(re.findall(r"^[*-] (.+?) -> ", out.stdout, re.MULTILINE))


# What a nox session's arguments (after `--`) are given to.
SESSION_COMMANDS = {"matrix": "matrix", "compare": "compare", "report": "report"}


def test_every_command_line_in_the_docs_is_one_the_cli_accepts() -> None:
    refused = []
    lines = commands()
    for where, env, words in lines:
        if words[0] != "nox":
            if (why := parse(words[1:])) is not None:
                refused.append(f"{where}\n    {why}")
            continue
        end = words.index("--") if "--" in words else len(words)
        named, posargs = _sessions_named(words[1:end]), words[end + 1 :]
        listed = sessions(tuple(sorted(env.items())))
        for name in named:
            # a parametrized session's base name (`-s bench`) selects all of them
            if name not in listed and not any(s.startswith(f"{name}(") for s in listed):
                refused.append(f"{where}\n    no nox session {name!r}")
                continue
            command = "run" if name.startswith("bench(") else SESSION_COMMANDS.get(name)
            if command and posargs and (why := parse([command, *posargs])) is not None:
                refused.append(f"{where}\n    {why}")
    assert len(lines) > 40, lines  # the README and the guide are full of them
    assert not refused, "\n".join(refused)


def _sessions_named(words: list[str]) -> list[str]:
    """The sessions a nox command line names (`-s a b`, `--sessions a`, `-e a`)."""
    named: list[str] = []
    taking = False
    for word in words:
        if word in ("-s", "--session", "--sessions", "-e"):
            taking = True
        elif word.startswith("-"):
            taking = False
        elif taking:
            named.append(word)
    return named


def _cli_options() -> set[str]:
    known: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            known.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return known


def test_every_option_the_docs_name_exists() -> None:
    known = _cli_options() | set(FOREIGN)
    unknown = {
        f"{path.relative_to(ROOT)}: {flag}"
        for path in DOCS
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", path.read_text())
        if flag not in known
    }
    assert not unknown, sorted(unknown)


def test_every_environment_variable_the_code_reads_is_documented_and_no_other() -> None:
    code = [*(ROOT / "bench").rglob("*.py"), ROOT / "noxfile.py", ROOT / "scripts/fan_out.py"]
    read = {v for path in code for v in re.findall(r"\bBENCH_[A-Z_]+\b", path.read_text())}
    table = (ROOT / "docs/reference/environment.md").read_text()
    documented = set(re.findall(r"^\| `(BENCH_[A-Z_]+)`", table, re.MULTILINE))
    assert read == documented, (sorted(read - documented), sorted(documented - read))


def test_the_example_files_load() -> None:
    servers = load_servers(ROOT / "servers.toml.example")
    assert {"python", "python-scaled", "zig"} < set(servers), sorted(servers)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"postgres", "redis"} <= set(compose["services"])


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= README_LIMIT, f"{len(readme)} bytes: move the detail into docs/"
    for target in re.findall(rb"\]\(((?:docs/)[^)#]+)", readme):
        assert (ROOT / target.decode()).exists(), target
