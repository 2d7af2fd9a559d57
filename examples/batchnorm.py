"""A classifier with BatchNorm: K-FAC refuses it by name, and accepts it with the BatchNorm frozen.

Adam trains this model (classifier_adam.py with ``nn.BatchNorm1d`` in place of ``nn.LayerNorm``).
BatchNorm in training mode normalises with batch statistics, so each example's output depends on
the whole batch; natgrad's curvature is built from per-example outputs and refuses such a module
up front rather than computing something silently wrong. The supported alternatives are
per-example normalisation (``nn.LayerNorm`` as in classifier_kfac.py, ``nn.GroupNorm``) or a
BatchNorm frozen with ``.eval()`` (it then uses its running statistics).
"""

from torch import nn

import natgrad

model = nn.Sequential(
    nn.Linear(2, 32), nn.BatchNorm1d(32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 3)
)
try:
    natgrad.KFAC(model, damping=1.0)
except ValueError as error:
    print(f"K-FAC refused the model: {error}")
model[1].eval()
optimizer = natgrad.KFAC(model, damping=1.0)
print(optimizer.describe())
