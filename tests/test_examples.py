"""The Adam -> K-FAC examples: three changed lines each, shown in the README, and they train."""
from __future__ import annotations

import difflib
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def changed_lines(name: str) -> list[str]:
    """The ``-``/``+`` lines of the diff from ``<name>_adam.py`` to ``<name>_kfac.py``."""
    adam, kfac = ((EXAMPLES / f"{name}_{optimizer}.py").read_text().splitlines() for optimizer in ("adam", "kfac"))
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


# 50 steps from the same seed; initial values: cross-entropy ~1.1 (3 classes), negative ELBO ~45 nats
# (measured: see each bound's comment). A broken step stays near the initial value.
@pytest.mark.parametrize("script, bound", [
    ("classifier_adam.py", 0.6),
    ("classifier_kfac.py", 0.6),
    ("conv_vae_adam.py", 30.0),
    ("conv_vae_kfac.py", 30.0),
])
def test_example_trains(script, bound, capsys):
    assert final_number(run(script, capsys)) < bound


def test_batchnorm_example_shows_the_refusal_and_the_frozen_alternative(capsys):
    output = run("batchnorm.py", capsys)
    assert "K-FAC refused the model: module '1' (BatchNorm1d)" in output
    assert "1.weight" in output and "diagonal (BatchNorm1d: no Kronecker form)" in output
