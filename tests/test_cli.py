"""The CLI's edge, without a running stack: the stack options every stack command takes (written once), the
one-line error and `--debug`'s traceback behind it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from canary_kit.cli.app import app
from canary_kit.cli.options import StackCommand
from canary_kit.core.errors import CanaryError

STACK_COMMANDS = [
    "set-weight",
    "promote",
    "rollback",
    "status",
    "history",
    "deploy",
    "finalize",
    "shadow",
    "rollout",
    "labels",
    "quality",
    "dashboard",
]


@pytest.mark.parametrize("command", STACK_COMMANDS)
def test_every_stack_command_takes_the_stack_options(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--state-dir", "--compose", "--compose-file"):
        assert option in result.output, (command, option)


def test_the_commands_acting_on_a_stack_are_stack_commands():
    import typer.main

    group = typer.main.get_command(app)
    found = sorted(name for name, command in group.commands.items() if isinstance(command, StackCommand))
    assert found == sorted(STACK_COMMANDS)


def test_an_error_is_one_line_and_debug_shows_its_traceback(tmp_path):
    plain = CliRunner().invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert plain.exit_code == 1 and plain.output.startswith("error: the canary stack is not running"), plain.output
    assert plain.output.count("\n") == 1 and "Traceback" not in plain.output
    debug = CliRunner().invoke(app, ["--debug", "status", "--state-dir", str(tmp_path)])
    assert debug.exit_code == 1, debug.output
    assert "Traceback" in debug.output and CanaryError.__name__ in debug.output, debug.output
    assert debug.output.rstrip("\n").splitlines()[-1] == plain.output.rstrip("\n")
    again = CliRunner().invoke(app, ["status", "--state-dir", str(tmp_path)])  # --debug does not stick
    assert "Traceback" not in again.output


def test_the_local_history_needs_no_running_stack(tmp_path):
    result = CliRunner().invoke(app, ["history", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0 and result.output == f"no changes recorded in {tmp_path / 'changes.log'}\n"


def test_what_a_user_wrote_is_printed_without_raw_control_characters(tmp_path):
    """A reason with an escape sequence (it would clear the terminal), a carriage return and a right-to-left
    override: `canary history` shows them as escapes; so does an error naming a bad value."""
    import json

    reason = "ok\x1b[2J\rgone\u202eevil"
    entry = {"time": "2026-12-07T00:00:00+00:00", "event": "set-weight", "by": "op\x07", "reason": reason}
    (tmp_path / "changes.log").write_text(json.dumps(entry) + "\n")
    shown = CliRunner().invoke(app, ["history", "--state-dir", str(tmp_path)]).output
    print(shown)
    assert not any(c in shown for c in "\x1b\r\x07\u202e")
    assert "ok\\x1b[2J\\rgone\\u202eevil" in shown and "op\\x07" in shown
    refused = CliRunner().invoke(app, ["deploy", "v1\x1b[2J", "--state-dir", str(tmp_path)])
    assert refused.exit_code == 1 and "\x1b" not in refused.output, refused.output
