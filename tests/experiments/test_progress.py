"""Progress output: a bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import io
import logging

from natgrad.experiments.progress import BarProgress, LineProgress, make_progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal():
    stream = FakeTerminal()
    progress = make_progress(10, 0, "sgd", "train.reconstruction_error", stream)
    assert isinstance(progress, BarProgress)
    progress.evaluated(0, {"train.reconstruction_error": 12.5}, 0.0)
    progress.step(4, 3.25)
    progress.close()
    text = stream.getvalue()
    assert "4/10" in text and "loss=3.25" in text and "train.reconstruction_error=12.5" in text


def test_plain_lines_otherwise(caplog):
    progress = make_progress(10, 0, "adam", "train.neg_elbo", io.StringIO())
    assert isinstance(progress, LineProgress)
    with caplog.at_level(logging.INFO, logger="natgrad.progress"):
        progress.step(5, 2.0)
        progress.evaluated(5, {"train.neg_elbo": 99.0}, 12.34)
    assert caplog.messages == ["adam step 5/10 loss=2 train.neg_elbo=99 12.3 steps/s"]
