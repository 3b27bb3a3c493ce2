"""Nonsense flag values are refused by argparse with a sentence, rc 2, no traceback (issue 16.4; breaker F4-F6)."""

from __future__ import annotations

import pytest

from host_viewer import cli
from pi_agent import cli as agent_cli


def _refused(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("main, argv", [
    (cli.main, ["127.0.0.1:1", "--headless", "--duration", "1"]),
    (agent_cli.main, ["--camera", "sim", "--listen", "127.0.0.1:0", "--no-announce"]),
])
def test_an_unknown_log_level_is_refused_not_a_traceback(main, argv, capsys):
    err = _refused(main, [*argv, "--log-level", "LOUD"], capsys)
    assert "--log-level" in err and "invalid choice: 'LOUD'" in err and "DEBUG" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag, value, says", [
    ("--fps", "nan", "--fps: nan is not a finite number"),
    ("--fps", "inf", "--fps: inf is not a finite number"),
    ("--fps", "-1", "--fps: -1 must be at least 0"),
    ("--max-viewers", "0", "--max-viewers: 0 must be at least 1"),
    ("--max-viewers", "-3", "--max-viewers: -3 must be at least 1"),
])
def test_the_agent_refuses_nonsense_rates_and_viewer_counts(flag, value, says, capsys):
    err = _refused(agent_cli.main, ["--camera", "sim", "--listen", "127.0.0.1:0", "--no-announce", flag, value],
                   capsys)
    assert says in err


def test_the_readme_flag_tables_list_every_flag_and_sensor():
    """Breaker F4: --max-viewers, --frames and three sensors were missing from the README's tables."""
    from pathlib import Path

    from pi_agent.camera.sensors import SENSORS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    tables = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    for parser in (cli.build_parser(), agent_cli.build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and action.help != "==SUPPRESS==" and option != "--help":
                    assert f"`{option}" in tables, f"{parser.prog} {option} is not in the README's flag tables"
    for sensor in SENSORS:
        assert sensor in tables, f"sensor {sensor} is not in the README"


def test_authorize_names_a_missing_file_as_such(tmp_path, capsys):
    """Breaker F8 (cosmetic): `pi-agent authorize /nonexistent/file` said "not a CURVE public key"."""
    assert agent_cli.main(["authorize", str(tmp_path / "nope" / "viewer.key"), "--config-dir", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
