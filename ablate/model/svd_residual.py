"""Effort's SVD-residual Linear (Yan et al., ICML 2025): freeze the principal subspace of a
pretrained weight and train only its smallest singular directions.

W = U Σ Vᵀ splits into a frozen rank-r part W_main = U_r Σ_r V_rᵀ and a trainable residual
U_res diag(S_res) V_res (the n - r smallest directions, n = min(out, in)). At initialisation the
sum is W, so the encoder starts exactly where the pretrained one was; training moves only the
directions that carry the least of what pretraining learned.

Effort adapts HF CLIP, whose q, k and v are separate Linears; timm fuses them into one `qkv`
Linear [3C, C]. Splitting that weight into three row blocks [C, C], each with its own SVD, makes
the trainable set (and the constraint losses) exactly Effort's.

State dict of one module (b = blocks, o = out // b, k = n - r):
    weight_main [out, in] (frozen), bias [out] (frozen, if the Linear had one),
    U_residual [b, o, k], S_residual [b, k], V_residual [b, k, in] (trained).
U_r [b, o, r], V_r [b, r, in] and weight_norm_sq [b] are non-persistent buffers: the losses
need them, and they are recomputed from the pretrained weight whenever the module is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def qkv_blocks(name: str, linear: nn.Linear) -> int:
    """3 for a fused timm `qkv` projection [3*in, in] (Effort decomposes q, k, v apart), else 1."""
    out_features, in_features = linear.weight.shape
    return 3 if name.endswith("qkv") and out_features == 3 * in_features else 1


def block_rank(linear: nn.Linear, blocks: int) -> int:
    """n = min(out, in) of one row block: the number of singular values it has."""
    out_features, in_features = linear.weight.shape
    return min(out_features // blocks, in_features)


class SVDResidualLinear(nn.Module):
    """A Linear whose weight is a frozen principal part plus a trainable SVD residual."""

    def __init__(self, linear: nn.Linear, rank: int, blocks: int = 1) -> None:
        super().__init__()
        weight = linear.weight.detach()  # [out, in]
        out_features, in_features = weight.shape
        if out_features % blocks:
            raise ValueError(f"{out_features} rows do not split into {blocks} blocks")
        n = block_rank(linear, blocks)
        if not 0 <= rank < n:
            raise ValueError(f"rank {rank} is outside [0, {n - 1}] for a weight {tuple(weight.shape)}")
        self.in_features, self.out_features, self.blocks, self.rank = (
            in_features, out_features, blocks, rank
        )
        # float64: the split must give back W to float32 precision, even for ViT-L's 1024 x 1024
        # on a GPU where there is one: ViT-L's 96 float64 SVDs take ~5 min on 2 CPU cores
        where = "cuda" if torch.cuda.is_available() else weight.device
        w64 = weight.to(where, torch.float64).reshape(blocks, out_features // blocks, in_features)  # [b, o, in]
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)  # [b, o, n], [b, n], [b, n, in]
        u, s, vh = u.to(weight.device), s.to(weight.device), vh.to(weight.device)
        main = (u[..., :rank] * s[:, None, :rank]) @ vh[:, :rank]  # [b, o, in]

        def cast(t: Tensor) -> Tensor:
            return t.to(weight.dtype).contiguous()

        self.weight_main = nn.Parameter(cast(main.reshape(out_features, in_features)),
                                        requires_grad=False)  # [out, in]
        self.bias = (nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
                     if linear.bias is not None else None)  # [out]
        self.U_residual = nn.Parameter(cast(u[..., rank:]))  # [b, o, k]
        self.S_residual = nn.Parameter(cast(s[:, rank:]))  # [b, k]
        self.V_residual = nn.Parameter(cast(vh[:, rank:]))  # [b, k, in]
        self.register_buffer("U_r", cast(u[..., :rank]), persistent=False)  # [b, o, r]
        self.register_buffer("V_r", cast(vh[:, :rank]), persistent=False)  # [b, r, in]
        self.register_buffer("weight_norm_sq", cast(w64.square().sum((-2, -1)).to(weight.device)),
                             persistent=False)  # [b]: ||W_block||_F^2 of the pretrained weight

    def residual(self, dtype: torch.dtype | None = None) -> Tensor:
        """U_res diag(S_res) V_res per block (in `dtype`, default the parameters')."""
        u, s, v = (t.to(dtype or t.dtype) for t in (self.U_residual, self.S_residual, self.V_residual))
        return (u * s[:, None, :]) @ v  # [b, o, in]

    @property
    def weight(self) -> Tensor:
        """The effective weight; a property because timm's Eva, BEiT and Swin-V2 attentions read
        `qkv.weight` directly (F.linear with their q/v bias) instead of calling the module."""
        return self.weight_main + self.residual().reshape(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)  # [..., out]

    def constraint_terms(self) -> tuple[Tensor, Tensor]:
        """Effort's two constraints per row block, in at least float32: orthogonal
        ||ÛᵀÛ - I||_F² + ||V̂V̂ᵀ - I||_F² (the residual stays orthogonal to the frozen subspace)
        and singular | ||Ŵ||_F² - ||W||_F² | (the weight keeps its energy)."""
        dtype = torch.promote_types(self.weight_main.dtype, torch.float32)
        u_hat = torch.cat([self.U_r, self.U_residual], dim=-1).to(dtype)  # [b, o, n]
        v_hat = torch.cat([self.V_r, self.V_residual], dim=-2).to(dtype)  # [b, n, in]
        eye = torch.eye(u_hat.shape[-1], dtype=dtype, device=u_hat.device)  # [n, n]
        orthogonal = ((u_hat.mT @ u_hat - eye).square().sum((-2, -1))
                      + (v_hat @ v_hat.mT - eye).square().sum((-2, -1)))  # [b]
        main = self.weight_main.to(dtype).reshape(self.blocks, -1, self.in_features)  # [b, o, in]
        w_hat = main + self.residual(dtype)  # [b, o, in]
        singular = (w_hat.square().sum((-2, -1)) - self.weight_norm_sq.to(dtype)).abs()  # [b]
        return orthogonal, singular

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"blocks={self.blocks}, rank={self.rank}, bias={self.bias is not None}")
