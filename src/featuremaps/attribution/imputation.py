"""How the faithfulness metrics fill removed pixels: Gaussian blur and ROAD's noisy linear imputation.

:func:`gaussian_blur` is RISE's insertion baseline; :func:`noisy_linear_impute`
fills removed pixels with the weighted mean of their neighbours (ROAD, Rong
et al., ICML 2022), solved jointly by preconditioned conjugate gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._errors import AttributionError

__all__ = ["gaussian_blur", "noisy_linear_impute"]


def gaussian_blur(x: torch.Tensor, sigma: float = 5.0, kernel_size: int = 11) -> torch.Tensor:
    """Blur every spatial axis of ``(N, C, *spatial)`` with a Gaussian (edges replicated).

    RISE's insertion baseline uses ``sigma=5`` and an 11-tap kernel.

    Example:
        >>> import torch
        >>> y = gaussian_blur(torch.rand(2, 3, 16, 16))
        >>> y.shape, bool(y.std() < 0.2)
        (torch.Size([2, 3, 16, 16]), True)
    """
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype).reshape(1, 1, -1)
    out = x
    for dim in range(2, x.ndim):
        moved = out.movedim(dim, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = F.pad(flat, (half, half), mode="replicate")
        out = F.conv1d(flat, k).reshape(shape).movedim(-1, dim)
    return out


def _neighbour_sum(y: torch.Tensor) -> torch.Tensor:
    """ROAD's weighted sum of the 8 neighbours (zero outside the image), separably.

    The weights ``[[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12`` are the outer
    product of ``[1, 2, 1]`` with itself minus 4 at the centre.
    """
    p = F.pad(y, (1, 1, 1, 1))
    r = torch.add(p[..., :-2], p[..., 2:]).add_(p[..., 1:-1], alpha=2)
    s = torch.add(r[..., :-2, :], r[..., 2:, :]).add_(r[..., 1:-1, :], alpha=2)
    return s.sub_(y, alpha=4).mul_(1 / 12)


def _solve_fill(values: torch.Tensor, unknown: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Solve ROAD's system for the unknown pixels of ``(B, 1, H, W)`` images (coarse-to-fine PCG)."""
    h, w = values.shape[-2:]
    known = (1 - unknown) * values
    guess = torch.zeros_like(values)
    if min(h, w) >= 16:
        # a coarse solution (2x2 blocks, known where any pixel is known) is the starting guess
        frac = F.avg_pool2d(1 - unknown, 2, ceil_mode=True)
        coarse = F.avg_pool2d(known, 2, ceil_mode=True) / frac.clamp_min(1e-12)
        filled = _solve_fill(coarse, (frac == 0).to(values.dtype), tol, max_iter)
        guess = F.interpolate(filled, size=(h, w), mode="bilinear", align_corners=False)
    degree = _neighbour_sum(torch.ones(1, 1, h, w, dtype=values.dtype, device=values.device))
    inv_diag = unknown / degree

    def apply(v: torch.Tensor) -> torch.Tensor:  # the system matrix on the unknown pixels
        return (degree * v).sub_(_neighbour_sum(v)).mul_(unknown)

    rhs = unknown * _neighbour_sum(known)
    y = unknown * guess
    r = rhs - apply(y)
    z = inv_diag * r
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    limit = tol * rhs.flatten(1).norm(dim=1).clamp_min(1e-12)
    running = torch.ones_like(limit, dtype=torch.bool)
    for i in range(max_iter):
        if i % 4 == 0:  # a converged system stops changing: results do not depend on batch-mates
            running &= r.flatten(1).norm(dim=1) > limit
            if not bool(running.any()):
                break
        ap = apply(p)
        alpha = rz / (p * ap).sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
        alpha = alpha * running.reshape(-1, 1, 1, 1)
        y.add_(alpha * p)
        r.sub_(alpha * ap)
        z = inv_diag * r
        rz_new = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        p = z.add_(p * (rz_new / rz.clamp_min(1e-30)))
        rz = rz_new
    return known + unknown * y


def noisy_linear_impute(
    x: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float | torch.Tensor = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-4,
    max_iter: int = 2000,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of the ``removed`` pixels of 2D images, batched.

    Each removed pixel becomes the weighted mean of its in-image 8
    neighbours (weights 1/6 direct, 1/12 diagonal), jointly for all removed
    pixels: the linear system of the ROAD paper. It is solved per image and
    channel with Jacobi-preconditioned conjugate gradients (the system is
    symmetric positive definite whenever some pixel is kept), started from
    the solution of the same problem at half resolution; then ``noise``
    times standard normal noise is added to the filled pixels. The default
    tolerance leaves errors near 1e-3, ten times below ROAD's noise.

    Args:
        x: ``(B, C, H, W)`` images.
        removed: ``(B, H, W)`` or ``(B, 1, H, W)`` boolean masks of the pixels to fill.
        noise: standard deviation of the added noise (in ``x``'s units), or
            the noise itself, a tensor broadcastable to ``x``.
        generator: for reproducible noise (a CPU generator).
        tol: relative residual at which the solver stops.
        max_iter: iteration cap per resolution.

    Returns:
        The imputed images.

    Example:
        >>> import torch
        >>> x = torch.arange(25.0).reshape(1, 1, 5, 5)       # a linear ramp
        >>> hole = torch.zeros(1, 5, 5, dtype=torch.bool); hole[0, 1:4, 1:4] = True
        >>> y = noisy_linear_impute(x, hole, noise=0.0, tol=1e-6)
        >>> bool(torch.allclose(y, x, atol=1e-3))            # linear data is filled exactly
        True
    """
    if x.ndim != 4:
        raise AttributionError(f"ROAD imputation works on (B, C, H, W) images; got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    u = removed.reshape(b, 1, h, w).to(x.device)
    if not bool(u.any()):
        return x
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    unknown = u.to(dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
    filled = _solve_fill(x.to(dtype).reshape(b * c, 1, h, w), unknown, tol, max_iter)
    if isinstance(noise, torch.Tensor):
        extra = noise.to(filled.device, dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
        filled = filled + unknown * extra
    elif noise:
        eps = torch.randn(filled.shape, generator=generator, dtype=dtype)
        filled = filled + unknown * (noise * eps.to(filled.device))
    return filled.reshape(b, c, h, w).to(x.dtype)
