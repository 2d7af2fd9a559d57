"""The perturbation-norm study of divergences' local metrics (``natgrad geometry``).

It sits above :mod:`natgrad.geometry` (divergences, metrics, pull-back), which stays below the
optimizers; the study itself trains models, solves with CG and writes a report, so it lives here.
"""
