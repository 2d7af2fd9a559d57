"""K-FAC on your own nn.Module with Linear and Conv2d layers (a small convolutional autoencoder)."""

import torch
from torch import nn

from natgrad.distributions import Bernoulli
from natgrad.losses import Loss, likelihood_term
from natgrad.optim import KFAC


class ConvAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)  # Kronecker block (KFC)
        self.code = nn.Linear(4 * 8 * 8, 16)  # Kronecker block
        self.out = nn.Linear(16, 64)  # Kronecker block

    def forward(self, x: torch.Tensor) -> Bernoulli:
        h = torch.sigmoid(self.conv(x)).flatten(1)
        return Bernoulli(self.out(torch.sigmoid(self.code(h))))  # logits of the 8x8 pixels


def terms(likelihood, inputs):
    (x,) = inputs  # a loss is a sum of terms, each with its own curvature
    return (likelihood_term(likelihood, x.flatten(1)),)


torch.manual_seed(0)
images = (torch.rand(8, 1, 8, 8) > 0.5).float()[torch.randint(0, 8, (256,))]  # 8 prototypes
model = ConvAutoencoder()
optimizer = KFAC(model, damping={"initial": 1.0})  # every other hyper-parameter: paper default


def closure() -> Loss:
    optimizer.zero_grad()
    loss = Loss.from_model(model, (images,), terms)
    loss.value.backward()
    return loss


for step in range(30):
    loss = optimizer.step(closure)
    # a StepRecord: objective, rho, damping, gamma, alpha, mu, rejected ...
    record = optimizer.last_step_record
    if step % 10 == 0:
        print(f"step {step:2d}  loss {record.objective:.3f}  damping {record.damping:.3g}")
print(f"final loss {float(closure().value.detach()):.3f}")
