"""The Adam -> K-FAC examples: three changed lines each, shown in the README, and they train."""

from __future__ import annotations

import difflib
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def changed_lines(name: str) -> list[str]:
    """The ``-``/``+`` lines of the diff from ``<name>_adam.py`` to ``<name>_kfac.py``."""
    adam, kfac = (
        (EXAMPLES / f"{name}_{optimizer}.py").read_text().splitlines()
        for optimizer in ("adam", "kfac")
    )
    diff = difflib.unified_diff(adam, kfac, lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


@pytest.mark.parametrize("name", ["classifier", "conv_vae"])
def test_switch_to_kfac_changes_at_most_three_lines_as_the_readme_shows(name):
    lines = changed_lines(name)
    removed, added = sum(line[0] == "-" for line in lines), sum(line[0] == "+" for line in lines)
    assert max(removed, added) <= 3
    readme = (ROOT / "README.md").read_text()
    assert all(line in readme for line in lines)


def run(script: str, capsys) -> str:
    sys.path.insert(0, str(EXAMPLES))
    try:
        runpy.run_path(str(EXAMPLES / script), run_name="example")
    finally:
        sys.path.remove(str(EXAMPLES))
    return capsys.readouterr().out


def final_number(output: str) -> float:
    return float(output.strip().splitlines()[-1].split(":")[1].split()[0])


# Before training the cross-entropy is about ln 3 = 1.10 (3 classes) and the negative ELBO about
# 64 ln 2 = 44.4 nats (64 pixels at logit 0); the bounds are 3/4 and 6/7 of those, which a broken
# step (one that leaves the parameters near their start) does not reach in 50 steps.
@pytest.mark.parametrize(
    "script, bound",
    [
        ("classifier_adam.py", 0.82),
        ("classifier_kfac.py", 0.82),
        ("conv_vae_adam.py", 38.0),
        ("conv_vae_kfac.py", 38.0),
    ],
)
def test_example_trains(script, bound, capsys):
    assert final_number(run(script, capsys)) < bound


def test_batchnorm_example_shows_the_refusal_and_the_frozen_alternative(capsys):
    output = run("batchnorm.py", capsys)
    assert "K-FAC refused the model: module '1' (BatchNorm1d)" in output
    assert "1.weight" in output and "diagonal (BatchNorm1d: no Kronecker form)" in output


def test_distributed_example_trains_on_two_processes():
    # It starts its own 2 processes (gloo); the negative ELBO starts at about 64 ln 2 = 44.4 nats.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "distributed_kfac.py")],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 processes") and final_number(done.stdout) < 38.0
