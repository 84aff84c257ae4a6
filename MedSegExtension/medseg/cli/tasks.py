"""``medseg tasks``: every task (presets and installed learned models), what it needs and produces."""

from __future__ import annotations

import argparse
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.core.errors import ExitCode
from medseg.core.specs import Task
from medseg.pipeline.tasks import available_tasks


def add_parser(sub: Any) -> None:
    """Add ``tasks`` to the ``medseg`` subparsers."""
    t = sub.add_parser("tasks", help=COMMANDS["tasks"][1])
    t.set_defaults(handler=cmd_tasks, writes_output=False)


def describe_task(task: Task) -> list[str]:
    """The lines ``medseg tasks`` prints for ``task``."""
    lines = [task.name, f"  {task.description}", f"  needs:    {task.describe_inputs()}",
             f"  produces: {'; '.join(task.produces)}"]
    if task.params:
        lines.append(f"  options:  {', '.join(f'{k}={v}' for k, v in task.params.items())}")
    if task.licence:
        lines.append(f"  licence:  {task.licence}")
    return lines


def cmd_tasks(args: argparse.Namespace) -> ExitCode:
    """Print every available task, a blank line after each."""
    for task in available_tasks().values():
        print("\n".join(describe_task(task)))
        print()
    return ExitCode.OK
