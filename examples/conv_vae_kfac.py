"""Train the convolutional VAE for 50 steps; conv_vae_adam.py and conv_vae_kfac.py differ in 3
lines.
"""

import torch

import natgrad
import toy_models

torch.manual_seed(0)
images = toy_models.bars()
model = toy_models.ConvVAE()
optimizer = natgrad.KFAC(model, damping=1.0)
for step in range(50):
    batch = images[torch.randint(len(images), (64,))]

    def closure():
        optimizer.zero_grad()
        loss = natgrad.Loss.from_model(model, (batch,), toy_models.elbo_terms)
        loss.backward()
        return loss

    optimizer.step(closure)
with torch.no_grad():
    print(
        "negative ELBO after 50 steps: "
        f"{float(toy_models.negative_elbo(model(images), images)):.2f} nats"
    )
