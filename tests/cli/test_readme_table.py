"""The README's command table is what the CLI itself gives (python -m lossyvision.cli.doc)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from lossyvision.cli import main
from lossyvision.cli.doc import BEGIN, END, command_table, render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_command_table_is_generated_from_the_cli():
    text = README.read_text()
    assert render(text, command_table()) == text, "README's command table is out of date: run python -m lossyvision.cli.doc"


def test_the_table_lists_every_command_and_option():
    table = command_table()
    for name, cmd in main.commands.items():
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| `{name}"))
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not {"--help", "--version", "--verbose", "--quiet"} & set(p.opts):
                assert f"`{'/'.join(p.opts + p.secondary_opts)}`" in row, (name, p.opts)


def test_generator_rewrites_a_stale_table_and_check_says_so(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\n| stale |\n{END}\n\nrest\n")
    cmd = [sys.executable, "-m", "lossyvision.cli.doc", str(readme)]
    p = subprocess.run([*cmd, "--check"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "out of date" in p.stderr
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode == 0
    text = readme.read_text()
    assert "| stale |" not in text and "| `prepare-shards` |" in text and text.endswith(f"{END}\n\nrest\n")
    assert subprocess.run([*cmd, "--check"], capture_output=True, text=True, timeout=120).returncode == 0
