"""Train the toy classifier for 50 steps; classifier_adam.py and classifier_kfac.py differ in 3
lines.
"""

import torch

import natgrad
from toy_models import blobs, make_classifier, test_cross_entropy

torch.manual_seed(0)
x, labels = blobs()
model = make_classifier()
optimizer = natgrad.KFAC(model, damping=1.0)
for step in range(50):
    batch = torch.randint(len(x), (64,))

    def closure():
        optimizer.zero_grad()
        loss = natgrad.cross_entropy(model, x[batch], labels[batch])
        loss.backward()
        return loss

    optimizer.step(closure)
print(f"test cross-entropy after 50 steps: {test_cross_entropy(model, x, labels):.3f}")
