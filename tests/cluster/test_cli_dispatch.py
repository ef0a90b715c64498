"""`lam` is a dispatcher: each stage owns its command line (issue 18). These fail when stage logic or a
second parser creeps back into cluster/cli.py, or a stage's flags stop parsing through it."""
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import cli

ROOT = Path(__file__).resolve().parents[2]
NESTED = {"data": ["stats", "show", "repair", "upgrade"], "cluster": ["up", "down", "submit", "status"],
          "agent": ["serve", "audit"]}


def test_cli_stays_a_dispatcher():
    lines = (ROOT / "cluster" / "cli.py").read_text().count("\n")
    assert lines < 150, f"cluster/cli.py has {lines} lines: a command's flags and logic belong beside its stage"
    assert "add_argument(" not in (ROOT / "cluster" / "cli.py").read_text()


@pytest.mark.parametrize("words", [[name] for name, *_ in cli.COMMANDS]
                         + [[top, sub] for top, subs in NESTED.items() for sub in subs])
def test_every_command_help_works_through_main(words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*words, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lam {' '.join(words)}")


def test_a_command_imports_only_its_own_stage():
    # the agent API's FastAPI costs half a second: `lam collect` must not pay it
    code = ("import sys; from cluster.cli import build_parser; build_parser(['collect', '--episodes', '3'])"
            ".parse_args(['collect', '--episodes', '3']); assert 'fastapi' not in sys.modules, 'fastapi imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_lazy_and_full_parsers_agree():
    argv = ["eval", "--policy", "random", "--levels", "BabyAI-GoToLocal-v0", "--episodes", "2"]
    lazy, full = vars(cli.build_parser(argv).parse_args(argv)), vars(cli.build_parser().parse_args(argv))
    assert lazy == full
