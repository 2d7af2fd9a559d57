"""The reconstruction errors the deep-autoencoder papers report, cited, for the bench report.

Definition shared by all of them: squared error summed over the pixels of an image, averaged over
the images, on the sigmoid probabilities (MNIST, CURVES) or the linear outputs (FACES); see
:mod:`natgrad.experiments.metrics`. Sources (as transcribed in the project's data notes,
``shared/data/README.md``; the PDFs were not readable here, so the digits are not re-verified):

* Sutskever, Martens, Dahl & Hinton (2013), *On the importance of initialization and momentum in
  deep learning*, ICML, Table 1: **training** errors of Martens' (2010) Hessian-free, an improved
  HF, the best Nesterov-momentum SGD and plain SGD (full training sets, long runs).
* Hinton & Salakhutdinov (2006), *Reducing the dimensionality of data with neural networks*,
  Science, Fig. 2: **test** errors of the pretrained deep autoencoder and of PCA.
* Martens & Grosse (2015), *Optimizing neural networks with Kronecker-factored approximate
  curvature*, ICML, section 13: K-FAC on the same three problems, reported as curves of training
  error against iterations and time (no table of final errors), so no number is quoted from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    """One reported error: method, split, value, source."""

    method: str
    split: str  # 'train' | 'test'
    value: float
    source: str


SUTSKEVER = "Sutskever et al. 2013, Table 1"
HINTON = "Hinton & Salakhutdinov 2006, Fig. 2"

#: dataset -> reported errors on the full problem (autoencoder architecture of that dataset).
REPORTED: dict[str, list[PaperNumber]] = {
    "curves": [
        PaperNumber("HF (Martens 2010)", "train", 0.11, SUTSKEVER),
        PaperNumber("improved HF", "train", 0.058, SUTSKEVER),
        PaperNumber("Nesterov momentum SGD (best)", "train", 0.074, SUTSKEVER),
        PaperNumber("plain SGD", "train", 0.48, SUTSKEVER),
        PaperNumber("pretrained deep autoencoder", "test", 1.44, HINTON),
        PaperNumber("PCA, 18 components", "test", 5.90, HINTON),
    ],
    "mnist": [
        PaperNumber("HF (Martens 2010)", "train", 1.4, SUTSKEVER),
        PaperNumber("improved HF", "train", 0.69, SUTSKEVER),
        PaperNumber("Nesterov momentum SGD (best)", "train", 0.73, SUTSKEVER),
        PaperNumber("plain SGD", "train", 2.1, SUTSKEVER),
        PaperNumber("pretrained deep autoencoder", "test", 3.00, HINTON),
        PaperNumber("PCA, 30 components", "test", 13.87, HINTON),
    ],
    "faces": [
        PaperNumber("HF (Martens 2010)", "train", 12.0, SUTSKEVER),
        PaperNumber("improved HF", "train", 7.5, SUTSKEVER),
        PaperNumber("Nesterov momentum SGD (best)", "train", 7.7, SUTSKEVER),
        PaperNumber("plain SGD", "train", 36.4, SUTSKEVER),
        PaperNumber("pretrained deep autoencoder", "test", 126.0, HINTON),
        PaperNumber("PCA, 30 components", "test", 135.0, HINTON),
    ],
}

K_FAC_NOTE = (
    "Martens & Grosse 2015 (section 13) report K-FAC on these problems as training-error curves "
    "against iterations and time, not as a table; no number is quoted from it."
)


def papers_table(dataset: str) -> str:
    """Markdown table of the errors reported for ``dataset``'s autoencoder; '' when none are
    known.
    """
    rows = REPORTED.get(dataset, [])
    if not rows:
        return ""
    lines = ["| method (paper) | split | reported error | source |", "|---|---|---:|---|"]
    lines += [f"| {r.method} | {r.split} | {r.value:g} | {r.source} |" for r in rows]
    return "\n".join(lines) + "\n"
