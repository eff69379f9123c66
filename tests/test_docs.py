"""Every `python -m rhf_core …` command in the README and docs/ parses with the real CLI.

The docs are where a newcomer copies commands from; a renamed flag or command must fail here,
not on their machine. Each command's arguments go through `build_parser().parse_args`, which
exits on an unknown command or flag without running anything."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rhf_core.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _shell_blocks(text: str) -> list[str]:
    """The bodies of fenced ```bash / ```sh / bare ``` blocks (not python ones)."""
    blocks, body, lang = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash", "sh"):
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for each `python -m rhf_core` / `rhf` command in a fenced block."""
    out = []
    for path in DOCS:
        for block in _shell_blocks(path.read_text(encoding="utf-8")):
            block = block.replace("\\\n", " ")  # join continued lines
            for line in block.splitlines():
                line = line.split(" # ")[0].strip()
                m = re.search(r"(?:python -m rhf_core|^rhf|accelerate launch (?:--\S+(?: \S+)? )*-m rhf_core)\s+(.*)", line)
                if m:
                    out.append((f"{path.relative_to(ROOT)}: {line[:60]}", shlex.split(m.group(1))))
        # commands quoted inline in prose, e.g. `python -m rhf_core eval-judge --n 1000 …`
        for m in re.finditer(r"`python -m rhf_core ([^`]+)`", path.read_text(encoding="utf-8").replace("\n", " ")):
            if not m.group(1).startswith("COMMAND"):
                out.append((f"{path.relative_to(ROOT)}: {m.group(0)[:60]}", shlex.split(m.group(1))))
    return out


COMMANDS = _commands()


def test_the_docs_hold_commands():
    # The README and the experiment files carry the reproduction commands of every shipped checkpoint.
    assert len(COMMANDS) >= 25  # 27 when written; a parser that finds none must fail
    names = {argv[0] for _, argv in COMMANDS}
    assert {"train-rahf", "eval-rahf", "train-t2i", "train-reward", "finetune", "eval-lee", "eval-repair"} <= names


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_command_parses(where, argv):
    argv = [a for a in argv if a != "…"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse prints the unknown flag or command to stderr
        pytest.fail(f"{where}: `{' '.join(argv)}` does not parse (exit {e.code})")
    assert args.command == argv[0]


@pytest.mark.parametrize("command", ["train-rahf", "train-t2i", "train-clip", "train-reward", "finetune"])
def test_training_outputs_default_under_cache(command):
    # A run with default flags must never overwrite the shipped checkpoints in rhf_core/assets/.
    settings = build_parser().parse_args([command]).settings
    out = settings.out or f"cache/adapters/{settings.name}"  # finetune: empty out = cache/adapters/<name>
    assert out.startswith("cache/"), f"{command} writes to {out} by default"


def test_public_entry_points_come_from_rhf_core_without_importing_torch_first():
    import subprocess
    import sys

    code = ("import sys, rhf_core; assert 'torch' not in sys.modules, 'import rhf_core pulled in torch'; "
            "print(sorted(n for n in rhf_core.ENTRY_POINTS if not callable(getattr(rhf_core, n))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"  # every entry point resolves to a callable
