"""Set transformers: the context/target encoder and the JEPA predictor (SPEC section 4).

Tokens are a *set*: no sequence-index positions are added (every token already carries its box
and modality prior from the tokeniser). Every transformer here takes a padded ``[R, M, D]``
tensor and a ``Bool[R, M]`` mask of its real tokens, and internally runs on the real tokens only:
layer norms, projections and MLPs see a packed ``[T, D]`` matrix of the ``T`` real tokens, and
only attention goes back to the padded layout, where
:func:`torch.nn.functional.scaled_dot_product_attention` gets a boolean key mask. Padded keys
therefore get exactly zero attention, padded positions never reach a matrix product, and the
output holds zeros at padding (never NaN). When a batch has no padding at all, packing is a
free reshape.

With activation checkpointing on, a transformer keeps only each block's input for the backward
pass and recomputes the block's activations there
(:func:`torch.utils.checkpoint.checkpoint`, non-reentrant, which replays the random state so that
dropout draws the same masks): less memory, one more forward pass of the blocks, the same
gradients. It only applies in training mode with gradients enabled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class TokenLayout:
    """Where the real tokens of a padded ``[R, M, ...]`` batch lie, to pack and unpack them.

    Args:
        valid: ``Bool[R, M]``, the real tokens.

    Attributes:
        rows: ``R``.
        width: ``M``.
        dense: True when every token is real (packing is then a reshape).
        attn_mask: ``Bool[R, 1, 1, M]`` key mask for attention (None when dense). A row without
            any real token attends to all its (padded) keys, so that no backend divides by zero.
    """

    def __init__(self, valid: Tensor) -> None:
        self.rows, self.width = valid.shape
        self.dense = bool(valid.all())
        self._flat: Tensor | None = None
        self.attn_mask: Tensor | None = None
        if not self.dense:
            self._flat = valid.reshape(-1).nonzero().squeeze(1)
            keys = valid | ~valid.any(dim=1, keepdim=True)
            self.attn_mask = keys[:, None, None, :]

    def pack(self, x: Tensor) -> Tensor:
        """``[R, M, C]`` -> ``[T, C]``: the real tokens, row by row."""
        flat = x.reshape(self.rows * self.width, x.shape[-1])
        return flat if self._flat is None else flat.index_select(0, self._flat)

    def unpack(self, x: Tensor) -> Tensor:
        """``[T, C]`` -> ``[R, M, C]`` with zeros at padding."""
        if self._flat is not None:
            x = x.new_zeros(self.rows * self.width, x.shape[-1]).index_copy(0, self._flat, x)
        return x.view(self.rows, self.width, x.shape[-1])


class Block(nn.Module):
    """Pre-LN transformer block on packed tokens: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``.

    Args:
        dim: Token width.
        heads: Attention heads (``dim`` must be divisible by it).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: Dropout on both residual branches (training only). Attention weights are not
            dropped, which keeps the fused attention kernels usable.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        """Update packed tokens.

        Args:
            x: ``Float[T, D]`` the real tokens of ``layout``, packed.
            layout: Their place in the padded batch.

        Returns:
            ``Float[T, D]``.
        """
        rows, width, dim = layout.rows, layout.width, x.shape[-1]
        qkv = layout.unpack(self.qkv(self.norm1(x)))
        q, k, v = qkv.view(rows, width, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.attn_mask)
        attn = layout.pack(attn.transpose(1, 2).reshape(rows, width, dim))
        x = x + F.dropout(self.proj(attn), self.dropout, self.training)
        hidden = F.gelu(self.fc1(self.norm2(x)))
        return x + F.dropout(self.fc2(hidden), self.dropout, self.training)


class Transformer(nn.Module):
    """A stack of pre-LN :class:`Block` s and a final LayerNorm over padded token sets.

    Args:
        dim: Token width.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: Dropout of every block (training only).
        checkpointing: Recompute each block's activations in the backward pass instead of
            keeping them (training with gradients only; see the module docstring).

    Attributes:
        checkpointing: The same; may be switched at any time.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.checkpointing = checkpointing
        blocks = [Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)]
        with torch.no_grad():  # ViT init, deeper residual branches shrunk as in I-JEPA
            for layer, block in enumerate(blocks, start=1):
                block.apply(init_weights)
                block.proj.weight.div_(math.sqrt(2.0 * layer))
                block.fc2.weight.div_(math.sqrt(2.0 * layer))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, valid: Tensor, layers: int = 1) -> Tensor:
        """Encode token sets.

        Args:
            x: ``Float[R, M, D]`` padded token sets.
            valid: ``Bool[R, M]``, the real tokens.
            layers: How many of the last blocks' outputs to return, each through the final
                LayerNorm, concatenated along the features (earliest first, the last block's
                output last).

        Returns:
            ``Float[R, M, layers * D]``, zeros at padding.

        Raises:
            ValueError: If ``layers`` is not between 1 and the depth.
        """
        if not 1 <= layers <= len(self.blocks):
            raise ValueError(
                f"layers must be between 1 and the depth {len(self.blocks)}, got {layers}")
        layout = TokenLayout(valid)
        h = layout.pack(x).to(self.norm.weight.dtype)  # full-precision residual stream
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        outputs = []
        for depth, block in enumerate(self.blocks, start=1):
            h = checkpoint(block, h, layout, use_reentrant=False) if recompute else block(h, layout)
            if depth > len(self.blocks) - layers:
                outputs.append(self.norm(h))
        out = torch.cat(outputs, dim=-1) if layers > 1 else outputs[0]  # no copy for one layer
        return layout.unpack(out)


class SetEncoder(nn.Module):
    """The context/target encoder: a pre-LN transformer over token sets with register tokens.

    Register tokens (learned, shared by all rows) are prepended to every row and dropped from the
    output; they give attention a sink and keep every row non-empty.

    Args:
        dim: Token width ``d``.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: Dropout (training only).
        registers: Number of register tokens.
        checkpointing: Activation checkpointing of the blocks (see :class:`Transformer`).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        registers: int = 2,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.register_tokens = nn.Parameter(torch.zeros(registers, dim))
        nn.init.trunc_normal_(self.register_tokens, std=0.02)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio, dropout, checkpointing)

    def forward(self, x: Tensor, valid: Tensor, layers: int = 1) -> Tensor:
        """Encode token sets.

        Args:
            x: ``Float[R, M, d]`` padded tokens (tokeniser output, priors added).
            valid: ``Bool[R, M]``, the real tokens.
            layers: Outputs of the last ``layers`` blocks, concatenated (see
                :meth:`Transformer.forward`).

        Returns:
            ``Float[R, M, layers * d]`` token embeddings, zeros at padding.
        """
        count = self.register_tokens.shape[0]
        if count:
            rows = x.shape[0]
            registers = self.register_tokens.to(x.dtype).expand(rows, count, -1)
            x = torch.cat([registers, x], dim=1)
            valid = torch.cat([valid.new_ones(rows, count), valid], dim=1)
        return self.transformer(x, valid, layers)[:, count:]


class Predictor(nn.Module):
    """The JEPA predictor: a narrow transformer from context embeddings to target embeddings.

    Each row is one (tile, target block) pair: the tile's context embeddings (projected to
    ``pred_dim``, plus their projected position/modality prior) followed by one query per target
    token (a learned mask token plus the projected prior of that token). All rows of a batch run in
    one batched pass; the outputs at the query positions are projected back to ``dim``.

    Args:
        dim: Encoder width ``d``.
        pred_dim: Predictor width ``d_p``.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``pred_dim``.
        checkpointing: Activation checkpointing of the blocks (see :class:`Transformer`).
    """

    def __init__(
        self,
        dim: int,
        pred_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, pred_dim)
        self.prior = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(pred_dim))
        self.transformer = Transformer(pred_dim, depth, heads, mlp_ratio, 0.0, checkpointing)
        self.head = nn.Linear(pred_dim, dim)
        for layer in (self.embed, self.prior, self.head):
            init_weights(layer)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self,
        context: Tensor,
        context_prior: Tensor,
        context_valid: Tensor,
        query_prior: Tensor,
        query_valid: Tensor,
        tile: Tensor,
    ) -> Tensor:
        """Predict the embeddings of every target block of a batch at once.

        Args:
            context: ``Float[B, C, d]`` context-encoder output per tile.
            context_prior: ``Float[B, C, d]`` position/modality prior of those tokens.
            context_valid: ``Bool[B, C]``, the real context tokens.
            query_prior: ``Float[R, Q, d]`` prior of each target token of each row.
            query_valid: ``Bool[R, Q]``, the real target tokens.
            tile: ``Long[R]``, the tile of each row.

        Returns:
            ``Float[R, Q, d]`` predictions (meaningless at padded queries).
        """
        ctx = self.embed(context) + self.prior(context_prior)
        queries = self.mask_token.to(ctx.dtype) + self.prior(query_prior)
        x = torch.cat([ctx.index_select(0, tile), queries.to(ctx.dtype)], dim=1)
        valid = torch.cat([context_valid.index_select(0, tile), query_valid], dim=1)
        out = self.transformer(x, valid)[:, context.shape[1] :]
        return self.head(out)


def init_weights(module: nn.Module) -> None:
    """ViT-style initialisation: truncated normal (std 0.02) linear weights, zero biases.

    Args:
        module: A module; only :class:`torch.nn.Linear` is touched (use with ``Module.apply``).
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
