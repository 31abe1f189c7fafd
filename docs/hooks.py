"""mkdocs hooks: the pages that must not drift from the code are written from it at build time.

A page holds a marker, `<!-- generated: NAME -->`, replaced by:
- `cli`: every command of `prefect-bench` and each of its options, from the real argparse
  parser (bench.cli.build_parser), with help text and defaults as `--help` prints them;
- `workloads`: every workload, its description and what it sends;
- `endpoints NAME`: the requests of the request workload NAME, as the load engine sends them;
- `result`: the result file's models (bench.results.schema), every field with its type and
  description; their JSON Schema is a file of the site (`on_files`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MARKER = re.compile(r"<!-- generated: ([\w-]+)(?: ([\w-]+))? -->")
SCHEMA_FILE = "reference/result.schema.json"
BODY_SHOWN = 160  # characters of a request body in a table


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs' hook: each marker replaced by what it names."""
    return MARKER.sub(lambda found: GENERATORS[found.group(1)](*filter(None, [found[2]])), markdown)


def cli_reference() -> str:
    """Every command and option of the CLI, as its parser declares them."""
    from bench.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = []
    for name, sub in commands.choices.items():
        lines += [f"## `prefect-bench {name}`", "", _cell(helps.get(name) or ""), ""]
        lines += [f"```text\n{sub.format_usage().strip()}\n```", ""]
        rows = [_option_row(action) for action in sub._actions if _shown(action)]
        if rows:
            lines += ["| option | meaning |", "| --- | --- |", *rows, ""]
    return "\n".join(lines)


def _shown(action: argparse.Action) -> bool:
    return action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(action.option_strings)
        if action.nargs != 0:
            names += f" {action.metavar or action.dest.upper()}"
    else:
        names = action.metavar or action.dest
    meaning = action.help or ""
    default = action.default
    if default not in (None, False, argparse.SUPPRESS, []) and "default" not in meaning:
        meaning += f" (default: {default})"
    return f"| `{_cell(names)}` | {_cell(meaning)} |"


def _cell(text: str) -> str:
    """`text` in one Markdown table cell: pipes escaped, `%%` as argparse prints it."""
    return " ".join(text.replace("%%", "%").replace("|", "\\|").split())


def result_reference() -> str:
    """The result file's models, field by field, then their JSON Schema."""
    from bench.results.schema import READABLE_VERSIONS, SCHEMA_VERSION, Result

    lines = [
        f"Schema version {SCHEMA_VERSION}; this prefect-bench reads versions "
        f"{', '.join(map(str, READABLE_VERSIONS))}.",
        "",
    ]
    for model in _models(Result):
        lines += [f"### `{model.__name__}`", "", _cell(model.__doc__ or ""), ""]
        lines += ["| field | type | meaning |", "| --- | --- | --- |"]
        for name, info in model.model_fields.items():
            kind = _cell(_type_name(info.annotation))
            lines.append(f"| `{name}` | {kind} | {_cell(info.description or '')} |")
        lines.append("")
    lines += [f"The JSON Schema of a result: [{SCHEMA_FILE}]({SCHEMA_FILE.rsplit('/', 1)[1]})."]
    return "\n".join(lines)


def result_schema() -> str:
    """The JSON Schema of a result file (pydantic's, of bench.results.schema.Result)."""
    from bench.results.schema import Result

    return json.dumps(Result.model_json_schema(), indent=2) + "\n"


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """mkdocs' hook: the result's JSON Schema as a file of the site."""
    files.append(File.generated(config, SCHEMA_FILE, content=result_schema()))
    return files


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every model its fields hold, in the order first met."""
    found: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for info in model.model_fields.values():
            for inner in _inner_types(info.annotation):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    visit(inner)

    visit(root)
    return found


def _inner_types(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    return [t for arg in args for t in _inner_types(arg)]


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if typing.get_args(annotation) else getattr(annotation, "__name__", "")
    text = re.sub(r"typing\.|bench\.[\w.]+\.|Annotated\[(.*?), .*?\]", r"\1", text)
    return f"`{text or annotation}`"


def workloads() -> str:
    """Every workload: its name, what it is, its requests or its scenario."""
    from bench.workloads import WORKLOADS, Workload

    lines = ["| workload | what it sends |", "| --- | --- |"]
    for name, workload in WORKLOADS.items():
        sends = (
            f"{len(workload.endpoints)} request{'s' if len(workload.endpoints) > 1 else ''}: "
            + ", ".join(f"`{e.name}`" for e in workload.endpoints)
            if isinstance(workload, Workload)
            else "a scenario of steps, per virtual user"
        )
        lines.append(f"| [`{name}`]({name}.md) | {_cell(workload.description)}; {sends} |")
    return "\n".join(lines)


def endpoints(name: str) -> str:
    """The requests of the request workload `name`: method, path, body."""
    from bench.workloads import WORKLOADS, Workload

    workload = WORKLOADS[name]
    assert isinstance(workload, Workload), f"{name} is a scenario workload"
    lines = ["| name | request | body |", "| --- | --- | --- |"]
    for e in workload.endpoints:
        text = json.dumps(e.body)
        text = text if len(text) <= BODY_SHOWN else text[: BODY_SHOWN - 1] + "…"
        body = f"`{_cell(text)}`" if e.body is not None else ""
        lines.append(f"| {e.name} | `{e.method} /api{e.path}` | {body} |")
    return "\n".join(lines)


GENERATORS = {
    "cli": cli_reference,
    "result": result_reference,
    "workloads": workloads,
    "endpoints": endpoints,
}
