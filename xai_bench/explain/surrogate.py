"""The pieces of a surrogate-model explanation (LIME, KernelSHAP), batched over images:
seeded binary samples z (B, S, M) of which features stay on, the sample weights, and the
weighted linear regression fitted to the model's scores.

Images may have different feature counts M_i (superpixels): tensors are padded to the largest
count, padded features are 0 in every sample (a zero column of the design matrix gets a zero
coefficient and does not change the others), and each image's draws depend on its own id and
count only, never on the batch it is in.
"""

from __future__ import annotations

import torch

from xai_bench.utils.seeded_noise import seeded_uniform

SHAP_END_WEIGHT = 1e6  # weight of the empty and full coalitions (infinite in theory; captum's)


def grouped_uniform(ids: torch.Tensor, counts: torch.Tensor, rows: int, extra: int, seed: int,
                    stream: int, device: torch.device) -> torch.Tensor:
    """(B, rows, extra + max M) uniform draws, image i's a function of (seed, id, stream, M_i):
    columns past extra + M_i hold -1 (never a valid draw)."""
    counts_list = counts.tolist()
    width = extra + max(counts_list)
    out = torch.full((ids.numel(), rows, width), -1.0, device=device)
    for count in sorted(set(counts_list)):  # one draw per distinct feature count
        sel = torch.tensor([c == count for c in counts_list], device=ids.device)
        draws = seeded_uniform(ids[sel], (rows, extra + count), seed=seed, stream=stream,
                               device=device)
        out[sel.to(device), :, : extra + count] = draws
    return out


def lime_samples(ids: torch.Tensor, counts: torch.Tensor, samples: int, seed: int,
                 stream: int, device: torch.device) -> torch.Tensor:
    """(B, S, M) LIME samples: every feature on with probability 1/2, independently (Ribeiro
    et al., 2016; captum's default sampling)."""
    u = grouped_uniform(ids, counts, samples, 0, seed, stream, device)
    return ((u >= 0) & (u < 0.5)).float()


def shap_samples(ids: torch.Tensor, counts: torch.Tensor, samples: int, seed: int,
                 stream: int, device: torch.device) -> torch.Tensor:
    """(B, S, M) KernelSHAP coalitions (Lundberg & Lee, 2017), sampled from the Shapley kernel:
    sample 0 all on, sample 1 all off, then a size k drawn with P(k) ~ (M-1) / (k (M-k)),
    k = 1..M-1, and k features chosen uniformly. With coalitions drawn in proportion to the
    kernel, each carries weight 1 in the regression (captum's sampling scheme)."""
    batch, width = counts.numel(), int(counts.max())
    z = torch.zeros(batch, samples, width, device=device)
    feats = torch.arange(width, device=device)
    valid = (feats[None, :] < counts[:, None].to(device)).float()  # (B, M)
    z[:, 0] = valid
    rest = samples - 2
    if rest <= 0:
        return z[:, :samples]
    u = grouped_uniform(ids, counts, rest, 1, seed, stream, device)  # column 0 picks the size
    m = counts.to(device).double()
    k = torch.arange(1, width, device=device, dtype=torch.float64)  # sizes 1..max M - 1
    prob = (m[:, None] - 1) / (k[None, :] * (m[:, None] - k[None, :]))
    prob = torch.where(k[None, :] < m[:, None], prob, torch.zeros_like(prob))
    cdf = prob.cumsum(1) / prob.sum(1, keepdim=True).clamp(min=1e-300)
    size = torch.searchsorted(cdf, u[..., 0].double().contiguous(), right=True) + 1
    # k <= M - 1 (M = 1: its one feature on), whatever the cdf's last rounding
    size = torch.minimum(size, (counts.to(device) - 1).clamp(min=1)[:, None])
    ranked = u[..., 1:].sort(dim=-1, descending=True).values  # padding (-1) sorts last
    threshold = ranked.gather(-1, (size - 1).unsqueeze(-1))
    z[:, 2:] = ((u[..., 1:] >= threshold) & (u[..., 1:] >= 0)).float()
    return z


def shap_weights(samples: int, batch: int, device: torch.device) -> torch.Tensor:
    """(B, S): SHAP_END_WEIGHT for the full and empty coalitions, 1 for the sampled ones, so
    the fit all but meets f(x) and f(baseline) exactly (the efficiency constraint)."""
    w = torch.ones(batch, samples, device=device, dtype=torch.float64)
    w[:, :2] = SHAP_END_WEIGHT
    return w


def lime_weights(z: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, baseline: float,
                 kernel_width: float) -> torch.Tensor:
    """(B, S) LIME's exponential kernel exp(-d^2 / (2 width^2)) on the cosine distance between
    the flattened image and each perturbed image (captum's default similarity), computed per
    feature without building the images: with z binary, x.p = sum_f z_f x_f.x_f +
    (1 - z_f) b sum x_f and |p|^2 = sum_f z_f |x_f|^2 + (1 - z_f) b^2 n_f."""
    batch, width = z.shape[0], z.shape[-1]
    x = images.double().flatten(2)  # (B, C, HW)
    idx = mask.flatten(1)  # (B, HW)
    per_pixel_sq = (x * x).sum(1)  # (B, HW)
    per_pixel_sum = x.sum(1)
    sq = torch.zeros(batch, width, dtype=torch.float64, device=z.device)
    total = torch.zeros_like(sq)
    count = torch.zeros_like(sq)
    sq.scatter_add_(1, idx, per_pixel_sq)
    total.scatter_add_(1, idx, per_pixel_sum)
    count.scatter_add_(1, idx, torch.full_like(per_pixel_sq, float(x.shape[1])))
    zd = z.double()
    dot = (zd * sq[:, None]).sum(-1) + ((1 - zd) * total[:, None]).sum(-1) * baseline
    norm_p = ((zd * sq[:, None]).sum(-1) + ((1 - zd) * count[:, None]).sum(-1) * baseline**2)
    norm_x = sq.sum(-1, keepdim=True)
    cos = dot / (norm_x.sqrt() * norm_p.sqrt()).clamp(min=1e-8)
    return torch.exp(-((1 - cos) ** 2) / (2 * kernel_width**2))


def solve_dtype(device: torch.device) -> torch.dtype:
    """float64 for the regression wherever the device has it (the KernelSHAP end weights make
    the system ill-conditioned in float32)."""
    return torch.float32 if device.type == "mps" else torch.float64


def weighted_linear_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                        alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched weighted least squares with an unpenalised intercept: argmin over (coef, c) of
    sum_s w_s (y_s - c - z_s.coef)^2 + alpha |coef|^2, as scikit-learn's LinearRegression
    (alpha = 0: the minimum-norm solution, through the pseudo-inverse) and Ridge fit it: data
    centred by the weighted means and rescaled by sqrt(w). Returns (B, M) coef and (B,) c."""
    dtype = solve_dtype(z.device)
    zd, yd, wd = z.to(dtype), y.to(dtype), w.to(dtype)
    wn = wd / wd.sum(1, keepdim=True)
    z_mean = (wn.unsqueeze(-1) * zd).sum(1)  # (B, M)
    y_mean = (wn * yd).sum(1)  # (B,)
    root = wd.sqrt()
    zc = (zd - z_mean[:, None]) * root.unsqueeze(-1)
    yc = (yd - y_mean[:, None]) * root
    if alpha > 0:
        eye = torch.eye(zd.shape[-1], dtype=dtype, device=zd.device)
        gram = zc.transpose(1, 2) @ zc + alpha * eye
        coef = torch.linalg.solve(gram, (zc.transpose(1, 2) @ yc.unsqueeze(-1))).squeeze(-1)
    else:
        coef = (torch.linalg.pinv(zc) @ yc.unsqueeze(-1)).squeeze(-1)
    return coef, y_mean - (z_mean * coef).sum(-1)
