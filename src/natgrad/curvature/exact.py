r"""Exact curvature oracles with torch.func: matrix-vector products and dense matrices.

Notation: ``h(theta) = (1/N) sum_n sum_t L_t(z_{t,n}(theta))`` is a :class:`~natgrad.losses.Loss`,
``J_t`` the Jacobian of term ``t``'s outputs, ``H_t`` its output curvature
(:attr:`~natgrad.losses.LossTerm.curvature`). Parameters and vectors follow the order of
``loss.parameters()`` (the same as :class:`~natgrad.curvature.layout.ParameterLayout`); every
product takes and returns a list of tensors aligned with it, every dense matrix is ``(P, P)``.

* GGN (Schraudolph 2002; Martens 2010 §4.2): ``G v = (1/N) sum_t J_t^T H_t J_t v`` — one ``jvp``,
  a multiplication by ``H_t`` in output space (diagonal, or a per-example matrix such as the
  softmax's ``diag(p) - p p^T``; :func:`natgrad.distributions.curvature_product`), one ``vjp``; no
  matrix is formed. For the VAE with
  :class:`~natgrad.curvature.choices.CurvatureKind` ``FULL`` the likelihood Jacobian runs through
  ``z = mu + sigma * eps`` (fixed ``eps``) into the encoder and the KL term adds
  ``J_enc^T diag(1, sigma^2/2) J_enc``; ``DECODER_ONLY`` keeps the likelihood term alone.
* Fisher (Martens 2014): ``F = (1/N) sum_{likelihood t} J_t^T F_{R,t} J_t``. Every output
  distribution's curvature is its ``F_R`` (equal to ``H_L`` for natural parameters), so this is the
  GGN of the likelihood terms; a non-likelihood term such as the KL has no Fisher.
* Empirical Fisher: ``(1/N) sum_n grad l_n grad l_n^T`` with ``l_n`` the per-example objective;
  products use ``(1/N) J_l^T (J_l v)`` with ``J_l`` the ``(N, P)`` Jacobian of ``l``, the dense
  matrix per-example gradients from ``vmap(grad)``.
* Hessian: forward-over-reverse ``jvp(grad h)``; dense by ``torch.func.hessian``.

These functions are the test oracle and the product Hessian-free optimisation uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import grad, hessian, jacrev, jvp, vjp, vmap

from natgrad.curvature.choices import CurvatureKind, select_terms
from natgrad.distributions import curvature_product
from natgrad.losses import Loss
from natgrad.validation import parse_choice

Params = Mapping[str, Tensor]


def detached_parameters(loss: Loss) -> dict[str, Tensor]:
    """The model's current trainable parameters, detached (the default evaluation point)."""
    return {k: v.detach() for k, v in loss.parameters().items()}


def _point(loss: Loss, params: Params | None) -> dict[str, Tensor]:
    return detached_parameters(loss) if params is None else dict(params)


def _aligned(params: dict[str, Tensor], vectors: Sequence[Tensor]) -> dict[str, Tensor]:
    vectors = list(vectors)
    if len(vectors) != len(params):
        raise ValueError(
            f"vectors must have one tensor per parameter ({len(params)}), got {len(vectors)}"
        )
    for (name, p), v in zip(params.items(), vectors):
        if v.shape != p.shape:
            raise ValueError(
                f"vector for {name!r} has shape {tuple(v.shape)}, expected {tuple(p.shape)}"
            )
    return dict(zip(params, vectors))


class OutputJacobian:
    r"""The Jacobian ``J`` of ``fn: point -> tuple of output tensors`` at one point, never formed.

    ``J v`` is one forward-mode pass (``jvp``); ``J^T u`` reuses one reverse pass (``vjp``) built at
    construction, so repeated products (CG, Lanczos) pay its forward once. The one place natgrad
    pulls an output-space matrix back to parameters: :func:`ggn_vector_product` (with the loss
    terms' curvature) and :class:`natgrad.geometry.PulledBackMetric` (with a divergence's metric).
    With ``has_aux`` ``fn`` returns ``(outputs, aux)`` and :attr:`aux` keeps the second part.
    """

    def __init__(self, fn: Callable, point, has_aux: bool = False) -> None:
        self.point = point
        if has_aux:
            self.outputs, self._pullback, self.aux = vjp(fn, point, has_aux=True)
            self._forward = lambda p: fn(p)[0]
        else:
            self.outputs, self._pullback = vjp(fn, point)
            self._forward, self.aux = fn, None

    def jvp(self, tangent):
        """``J v``: a tuple aligned with the outputs."""
        return jvp(self._forward, (self.point,), (tangent,))[1]

    def vjp(self, cotangent):
        """``J^T u``: shaped like the point."""
        return self._pullback(tuple(cotangent))[0]

    def pullback_product(self, metric: Sequence[Tensor], tangent):
        """``J^T M J v`` for an output-space metric given per output by its diagonal or per-example
        matrix.
        """
        return self.vjp(curvature_product(m, u) for m, u in zip(metric, self.jvp(tangent)))


def _term_outputs(loss: Loss, kind: CurvatureKind):
    """``theta -> (outputs of the selected terms, flat)`` with their curvature scaled by 1/N as
    aux.
    """

    def outputs(params: dict[str, Tensor]):
        terms = select_terms(loss.evaluate(params), kind)
        zs = tuple(z for t in terms for z in t.outputs)
        curv = tuple(c / loss.batch_size for t in terms for c in t.curvature)
        return zs, curv

    return outputs


def _gauss_newton_kind(kind: CurvatureKind | str) -> CurvatureKind:
    kind = parse_choice(CurvatureKind, "kind", kind)
    if kind is CurvatureKind.EMPIRICAL:
        raise ValueError(
            "ggn needs kind 'full' or 'decoder-only'; use empirical_fisher_* for 'empirical'"
        )
    return kind


def ggn_vector_product(
    loss: Loss,
    vectors: Sequence[Tensor],
    params: Params | None = None,
    kind: CurvatureKind | str = CurvatureKind.FULL,
) -> list[Tensor]:
    """``G v = (1/N) sum_t J_t^T H_t J_t v`` (jvp -> output curvature -> vjp), at ``params``."""
    kind = _gauss_newton_kind(kind)
    params = _point(loss, params)
    tangent = _aligned(params, vectors)
    jacobian = OutputJacobian(_term_outputs(loss, kind), params, has_aux=True)
    gv = jacobian.pullback_product(jacobian.aux, tangent)
    return [gv[k] for k in params]


def fisher_vector_product(
    loss: Loss, vectors: Sequence[Tensor], params: Params | None = None
) -> list[Tensor]:
    """``F v`` for the Fisher of the output distributions (the likelihood terms' ``J^T F_R J``)."""
    return ggn_vector_product(loss, vectors, params, CurvatureKind.DECODER_ONLY)


def _per_example_losses(loss: Loss):
    def losses(params: dict[str, Tensor]) -> Tensor:
        return sum(t.values for t in loss.evaluate(params))

    return losses


def empirical_fisher_vector_product(
    loss: Loss, vectors: Sequence[Tensor], params: Params | None = None
) -> list[Tensor]:
    """``(1/N) J_l^T (J_l v)`` with ``J_l`` the Jacobian of the per-example objective ``l``."""
    params = _point(loss, params)
    tangent = _aligned(params, vectors)
    fn = _per_example_losses(loss)
    _, jv = jvp(fn, (params,), (tangent,))
    _, pullback = vjp(fn, params)
    (fv,) = pullback(jv / loss.batch_size)
    return [fv[k] for k in params]


def hessian_vector_product(
    loss: Loss, vectors: Sequence[Tensor], params: Params | None = None
) -> list[Tensor]:
    """``nabla^2 h v`` by forward-over-reverse differentiation."""
    params = _point(loss, params)
    tangent = _aligned(params, vectors)
    _, hv = jvp(grad(loss.value_at), (params,), (tangent,))
    return [hv[k] for k in params]


def curvature_vector_product(
    loss: Loss,
    vectors: Sequence[Tensor],
    params: Params | None = None,
    kind: CurvatureKind | str = CurvatureKind.FULL,
) -> list[Tensor]:
    """The product with the matrix ``kind`` names: GGN (full / decoder-only) or empirical Fisher."""
    kind = parse_choice(CurvatureKind, "kind", kind)
    if kind is CurvatureKind.EMPIRICAL:
        return empirical_fisher_vector_product(loss, vectors, params)
    return ggn_vector_product(loss, vectors, params, kind)


def _flatten_jacobian(jac: Mapping[str, Tensor], lead: int) -> Tensor:
    """Concatenate per-parameter Jacobian blocks ``(*lead_shape, *param_shape)`` into ``(lead,
    P)``.
    """
    return torch.cat([j.reshape(lead, -1) for j in jac.values()], dim=1)


def dense_ggn(
    loss: Loss, params: Params | None = None, kind: CurvatureKind | str = CurvatureKind.FULL
) -> Tensor:
    """``G = (1/N) sum_t J_t^T H_t J_t`` as a ``(P, P)`` matrix (tiny models only)."""
    kind = _gauss_newton_kind(kind)
    params = _point(loss, params)
    outputs, curvature = _term_outputs(loss, kind)(params)
    jacobians = jacrev(lambda p: _term_outputs(loss, kind)(p)[0])(params)
    columns = [
        _flatten_jacobian(jac, z.numel()).T.reshape(-1, *z.shape)
        for jac, z in zip(jacobians, outputs)
    ]
    return dense_pullback(columns, curvature)


def dense_pullback(columns: Sequence[Tensor], metric: Sequence[Tensor]) -> Tensor:
    """``sum_k J_k^T M_k J_k`` as a ``(P, P)`` matrix (tiny models only).

    ``columns[k]`` is output ``k``'s Jacobian as ``(P, *output shape)`` (one column per parameter),
    ``metric[k]`` its output-space matrix: the diagonal or per-example matrices
    (:func:`natgrad.distributions.curvature_product`).
    """
    total = 0
    for j, m in zip(columns, metric):
        weighted = vmap(curvature_product, in_dims=(None, 0))(m, j)  # M J, column by column
        total = total + j.reshape(j.shape[0], -1) @ weighted.reshape(j.shape[0], -1).T
    return total


def dense_fisher(loss: Loss, params: Params | None = None) -> Tensor:
    """The Fisher of the output distributions as a ``(P, P)`` matrix."""
    return dense_ggn(loss, params, CurvatureKind.DECODER_ONLY)


#: ``(params, batch) -> (N,)`` per-example values whose per-example gradients are wanted.
PerExampleValues = Callable[[dict[str, Tensor], tuple[Tensor, ...]], Tensor]


def per_example_gradients_of(
    values: PerExampleValues,
    params: dict[str, Tensor],
    batch: tuple[Tensor, ...],
    random_forward: bool,
) -> dict[str, Tensor]:
    """``grad_theta values(theta, batch)[n]`` for every example ``n``: ``{name: (N, *shape)}``.

    A deterministic forward is differentiated one example at a time under ``vmap(grad)`` (memory of
    one example per ``vmap`` lane). A forward that draws random numbers cannot be split into
    examples (its noise is drawn for the whole batch and replayed), so then the whole batch's value
    vector is differentiated with ``jacrev``: one forward, ``N`` batched backward passes.
    """
    if random_forward:
        return jacrev(lambda p: values(p, batch), chunk_size=16)(params)

    def one(p: dict[str, Tensor], example: tuple[Tensor, ...]) -> Tensor:
        return values(p, tuple(t.unsqueeze(0) for t in example)).sum()

    return vmap(grad(one), in_dims=(None, 0))(params, batch)


def per_example_gradients(loss: Loss, params: Params | None = None) -> Tensor:
    """``grad l_n`` for every example (:func:`per_example_gradients_of`): ``(N, P)``."""

    def losses(p: dict[str, Tensor], batch: tuple[Tensor, ...]) -> Tensor:
        return sum(t.values for t in loss.evaluate(p, batch))

    grads = per_example_gradients_of(
        losses, _point(loss, params), loss.batch, loss.random_state is not None
    )
    return _flatten_jacobian(grads, loss.batch_size)


def dense_empirical_fisher(loss: Loss, params: Params | None = None) -> Tensor:
    """``(1/N) sum_n grad l_n grad l_n^T`` as a ``(P, P)`` matrix."""
    g = per_example_gradients(loss, params)
    return g.T @ g / loss.batch_size


def dense_hessian(loss: Loss, params: Params | None = None) -> Tensor:
    """``nabla^2 h`` as a ``(P, P)`` matrix."""
    params = _point(loss, params)
    blocks = hessian(loss.value_at)(params)
    sizes = [p.numel() for p in params.values()]
    rows = [
        torch.cat([blocks[a][b].reshape(sa, sb) for b, sb in zip(params, sizes)], dim=1)
        for a, sa in zip(params, sizes)
    ]
    return torch.cat(rows, dim=0)


def dense_curvature(
    loss: Loss, params: Params | None = None, kind: CurvatureKind | str = CurvatureKind.FULL
) -> Tensor:
    """The dense matrix ``kind`` names: GGN (full / decoder-only) or empirical Fisher."""
    kind = parse_choice(CurvatureKind, "kind", kind)
    if kind is CurvatureKind.EMPIRICAL:
        return dense_empirical_fisher(loss, params)
    return dense_ggn(loss, params, kind)
