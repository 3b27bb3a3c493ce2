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
