"""Fused Triton kernels for TIER's token–patch entropies, forward and backward.

The definition is ``tier_openclip.kernels.reference.token_patch_entropy_reference``. For pair n,
S = scale · T_n P_nᵀ (T×P) is computed tile by tile on chip and never stored. The forward writes
per-token statistics and per-patch partial statistics, one set per token block (O(N·P·⌈T/BLOCK_T⌉)),
which its reduction merges; what is saved for backward is O(N·(T+P)). Every entropy uses H = lse(s) − E_softmax(s)[s], from a running
max m, a running Σexp(s − m) and a running Σexp(s − m)·s.

Forward: one streaming pass over S, then a small reduction.
  ``_tier_fwd_kernel``, grid (N, ⌈T/BLOCK_T⌉): a program keeps BLOCK_T text tokens on chip and
  streams the pair's patches in BLOCK_P tiles. Each similarity tile feeds both directions:
    - token→patch: per-token statistics updated online across tiles, final when the stream ends
      (per-token lse and mean score, stored);
    - patch→token: per-patch statistics over this block's valid tokens, stored per token block.
  ``_tier_fwd_reduce_kernel``, grid (N,): merges each patch's per-block statistics by the same
  online rule into its lse and mean score, then averages H over valid tokens (h_text) and over
  all patches (h_image).
  Saved for backward: per-token and per-patch lse and mean score, and each pair's token count.

Backward: S is recomputed tile by tile, flash-attention style. With ∂H/∂s_k = −π_k (s_k − E_π[s]):
    dS[t,p] = valid_t · ( g_text/n_valid · π_row[t,p] (E_row[t] − S[t,p])
                        + g_image/P     · π_col[t,p] (E_col[p] − S[t,p]) )
  ``_tier_bwd_text_kernel``,  grid (N, ⌈T/BLOCK_T⌉): dT_n = scale · dS P_n    (patches streamed);
  ``_tier_bwd_image_kernel``, grid (N, ⌈P/BLOCK_P⌉): dP_n = scale · dSᵀ T_n  (tokens streamed).
  Each recomputes S once more; in exchange neither needs atomics, so gradients are deterministic
  and need no float32 scratch the size of the inputs.

A pair with no valid token has no column softmax: its patch statistics are set to 0, its
entropies to 0, and every dS entry is masked, so its gradients are exactly 0 (never NaN).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton import knobs

# Read when this module is imported, as triton.jit itself does.
_INTERPRET = knobs.runtime.interpret
# Triton's CPU interpreter multiplies the raw bit patterns in a bfloat16 tl.dot
# (triton-lang/triton#11584). float32 holds every bfloat16 value exactly and the GPU adds
# bfloat16 products in float32, so upcasting first gives the GPU's numbers.
_UPCAST_BF16_DOTS = tl.constexpr(_INTERPRET)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Tile helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(base, rows, cols, stride_row, stride_col, num_rows, num_cols):
    """A (rows × cols) tile, zero outside the matrix: padded similarities are 0, never garbage."""
    ptrs = base + rows[:, None] * stride_row + cols[None, :] * stride_col
    return tl.load(ptrs, mask=(rows[:, None] < num_rows) & (cols[None, :] < num_cols), other=0.0)


@triton.jit
def _token_validity(mask_base, offs_t, stride_mt, T, HAS_MASK: tl.constexpr):
    """True for tokens that exist and are not masked out."""
    valid = offs_t < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_base + offs_t * stride_mt, mask=valid, other=0) != 0)
    return valid


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """a @ b + acc, accumulated in float32."""
    if _UPCAST_BF16_DOTS:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _score_grad(s, ok, row_lse, row_mean, col_lse, col_mean, coef_text, coef_image):
    """dL/dS of a tile; exactly 0 where ``ok`` is False (padding, masked tokens, empty pairs)."""
    # -inf keeps excluded entries out of both softmaxes: π = 0 there, and no exp can overflow.
    s_ok = tl.where(ok, s, float("-inf"))
    p_row = tl.exp(s_ok - row_lse[:, None])
    p_col = tl.exp(s_ok - col_lse[None, :])
    return coef_text * p_row * (row_mean[:, None] - s) + coef_image * p_col * (col_mean[None, :] - s)


# ----------------------------------------------------------------------------------------------
# Autotuning
# ----------------------------------------------------------------------------------------------

# Budgets that keep a config's tiles on chip on Ampere and Hopper: float32 elements per thread for
# what stays resident (resident tile, accumulator), bytes of shared memory for the streamed tiles.
_REGISTER_BUDGET = 128
_SHARED_BUDGET = 160 * 1024


def _fits(resident_rows: int, streamed_rows: int, block_d: int, elem_bytes: int, config: triton.Config,
          accumulator: bool) -> bool:
    threads = 32 * config.num_warps
    resident = resident_rows * block_d * (elem_bytes + (4 if accumulator else 0)) // 4
    streamed = streamed_rows * block_d * elem_bytes * max(config.num_stages, 1)
    return resident // threads <= _REGISTER_BUDGET and streamed <= _SHARED_BUDGET


def _pruner(resident: str, streamed: str, accumulator: bool):
    """Drop configs whose tiles would spill for this D and dtype; keep the smallest if none fit."""

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        block_d = kwargs["BLOCK_D"]
        elem_bytes = named_args["text_ptr"].element_size()

        def rows(config: triton.Config, name: str) -> int:
            return config.kwargs.get(name, kwargs.get(name))

        kept = [c for c in configs
                if _fits(rows(c, resident), rows(c, streamed), block_d, elem_bytes, c, accumulator)]
        smallest = min(configs, key=lambda c: rows(c, resident) * rows(c, streamed) * c.num_stages)
        return kept or [smallest]

    return prune


def _configs(names: tuple[str, ...], choices: list[tuple[int, ...]]) -> list[triton.Config]:
    # The interpreter would "benchmark" every config at Python speed: one small fixed config there,
    # with blocks small enough that the tests' shapes span several of them.
    if _INTERPRET:
        return [triton.Config(dict.fromkeys(names, 16), num_warps=4, num_stages=1)]
    return [triton.Config(dict(zip(names, c[:-2])), num_warps=c[-2], num_stages=c[-1]) for c in choices]


# Short lists: a GPU machine starts with a cold cache, and the autotuner compiles every kept config
# of every (dtype, D, mask, alignment) variant it meets: 1.5-3 s each on a 2-core VM, by
# benchmarks/compile_check.py, which compiles them for sm_90 without a GPU. None of these spills
# at the headline shape (N, T, P, D = 256, 128, 196, 512, bfloat16).
# The first entry of each list is the smallest: the pruner's last resort when nothing else fits.
# (BLOCK_P, num_warps, num_stages); BLOCK_T is fixed on the host (it sets the statistics layout).
_FWD_CONFIGS = _configs(("BLOCK_P",), [(16, 4, 1), (32, 4, 2), (64, 8, 2)])
# (resident rows, streamed rows, num_warps, num_stages); 8 warps with 16 rows serve D = 1024.
_BWD_TEXT_CONFIGS = _configs(("BLOCK_T", "BLOCK_P"), [(16, 16, 4, 1), (16, 32, 8, 1), (32, 64, 8, 2)])
_BWD_IMAGE_CONFIGS = _configs(("BLOCK_P", "BLOCK_T"), [(16, 16, 4, 1), (16, 32, 8, 1), (32, 64, 8, 2)])
_KEY = ["T", "P", "D"]  # the autotuner adds the tensors' dtypes to the key


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY,
                 prune_configs_by={"early_config_prune": _pruner("BLOCK_T", "BLOCK_P", accumulator=False)})
@triton.jit
def _tier_fwd_kernel(
    text_ptr, image_ptr, mask_ptr,
    row_lse_ptr, row_mean_ptr,  # (N, T): per-token lse and mean score over patches
    part_max_ptr, part_sum_ptr, part_dot_ptr,  # (N, NUM_T_BLOCKS, P): per-patch stats of each token block
    T, P, D, NUM_T_BLOCKS, scale,
    stride_tn, stride_tt, stride_td,
    stride_in, stride_ip, stride_id,
    stride_mn, stride_mt,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)  # int64: n · stride can pass 2³¹ for large batches
    t_block = tl.program_id(1)
    offs_t = t_block * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)

    text = _load_rows(text_ptr + n * stride_tn, offs_t, offs_d, stride_tt, stride_td, T, D)
    token_ok = _token_validity(mask_ptr + n * stride_mn, offs_t, stride_mt, T, HAS_MASK)

    row_max = tl.full([BLOCK_T], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_T], tl.float32)
    row_dot = tl.zeros([BLOCK_T], tl.float32)
    part_base = (n * NUM_T_BLOCKS + t_block) * P
    for p_start in range(0, P, BLOCK_P):
        offs_p = p_start + tl.arange(0, BLOCK_P)
        patch_ok = offs_p < P
        image = _load_rows(image_ptr + n * stride_in, offs_p, offs_d, stride_ip, stride_id, P, D)
        s = scale * _dot(text, tl.trans(image), tl.zeros([BLOCK_T, BLOCK_P], tl.float32), PRECISION)

        # token → patch, online over the patch tiles. The first tile holds patch 0, so the running
        # max is finite from then on and exp(old max − new max) never sees −inf − (−inf).
        new_max = tl.maximum(row_max, tl.max(tl.where(patch_ok[None, :], s, float("-inf")), axis=1))
        rescale = tl.exp(row_max - new_max)
        e = tl.where(patch_ok[None, :], tl.exp(s - new_max[:, None]), 0.0)
        row_sum = row_sum * rescale + tl.sum(e, axis=1)
        row_dot = row_dot * rescale + tl.sum(e * s, axis=1)
        row_max = new_max

        # patch → token over this block's valid tokens. A block without one stores (−inf, 0, 0),
        # the identity of the merge; the shifted max keeps exp's argument finite meanwhile.
        col_max = tl.max(tl.where(token_ok[:, None], s, float("-inf")), axis=0)
        shift = tl.where(col_max == float("-inf"), 0.0, col_max)
        e = tl.where(token_ok[:, None], tl.exp(s - shift[None, :]), 0.0)
        tl.store(part_max_ptr + part_base + offs_p, col_max, mask=patch_ok)
        tl.store(part_sum_ptr + part_base + offs_p, tl.sum(e, axis=0), mask=patch_ok)
        tl.store(part_dot_ptr + part_base + offs_p, tl.sum(e * s, axis=0), mask=patch_ok)

    # Every token, masked or not, has a full row softmax; masking is applied where it is used.
    t_in = offs_t < T
    tl.store(row_lse_ptr + n * T + offs_t, row_max + tl.log(row_sum), mask=t_in)
    tl.store(row_mean_ptr + n * T + offs_t, row_dot / row_sum, mask=t_in)


@triton.jit
def _tier_fwd_reduce_kernel(
    mask_ptr, row_lse_ptr, row_mean_ptr, part_max_ptr, part_sum_ptr, part_dot_ptr,
    col_lse_ptr, col_mean_ptr,  # (N, P) out: per-patch lse and mean score over valid tokens
    h_text_ptr, h_image_ptr, num_valid_ptr,  # (N,) out
    T, P, NUM_T_BLOCKS, stride_mn, stride_mt,
    HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)

    # h_text: mean over valid tokens of lse − mean score.
    text_total = tl.zeros([BLOCK], tl.float32)
    text_count = tl.zeros([BLOCK], tl.float32)
    for t_start in range(0, T, BLOCK):
        offs_t = t_start + tl.arange(0, BLOCK)
        ok = _token_validity(mask_ptr + n * stride_mn, offs_t, stride_mt, T, HAS_MASK)
        lse = tl.load(row_lse_ptr + n * T + offs_t, mask=ok, other=0.0)
        mean = tl.load(row_mean_ptr + n * T + offs_t, mask=ok, other=0.0)
        text_total += tl.where(ok, lse - mean, 0.0)
        text_count += ok.to(tl.float32)
    num_valid = tl.sum(text_count, axis=0)

    # h_image: merge each patch's per-token-block statistics, then average over all patches.
    image_total = tl.zeros([BLOCK], tl.float32)
    for p_start in range(0, P, BLOCK):
        offs_p = p_start + tl.arange(0, BLOCK)
        p_in = offs_p < P
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK], tl.float32)
        a = tl.zeros([BLOCK], tl.float32)
        for b in range(0, NUM_T_BLOCKS):
            part = (n * NUM_T_BLOCKS + b) * P + offs_p
            m_b = tl.load(part_max_ptr + part, mask=p_in, other=float("-inf"))
            new_m = tl.maximum(m, m_b)
            shift = tl.where(new_m == float("-inf"), 0.0, new_m)  # both −inf: nothing seen yet
            old_scale = tl.exp(m - shift)
            new_scale = tl.exp(m_b - shift)
            l = l * old_scale + tl.load(part_sum_ptr + part, mask=p_in, other=0.0) * new_scale
            a = a * old_scale + tl.load(part_dot_ptr + part, mask=p_in, other=0.0) * new_scale
            m = new_m
        # l = 0 only when the pair has no valid token: 0 there, a finite stand-in for backward.
        seen = l > 0
        l_safe = tl.where(seen, l, 1.0)
        lse = tl.where(seen, m + tl.log(l_safe), 0.0)
        mean = tl.where(seen, a / l_safe, 0.0)
        tl.store(col_lse_ptr + n * P + offs_p, lse, mask=p_in)
        tl.store(col_mean_ptr + n * P + offs_p, mean, mask=p_in)
        image_total += tl.where(seen & p_in, lse - mean, 0.0)

    tl.store(h_text_ptr + n, tl.sum(text_total, axis=0) / tl.maximum(num_valid, 1.0))
    tl.store(h_image_ptr + n, tl.sum(image_total, axis=0) / P)  # 0 for a pair without tokens
    tl.store(num_valid_ptr + n, num_valid)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _grad_coefficients(g_text_ptr, g_image_ptr, num_valid_ptr, n, stride_gt, stride_gi, P):
    """dL/dh_text / n_valid and dL/dh_image / P. An empty pair masks every dS entry anyway."""
    num_valid = tl.load(num_valid_ptr + n)
    coef_text = tl.load(g_text_ptr + n * stride_gt) / tl.maximum(num_valid, 1.0)
    coef_image = tl.load(g_image_ptr + n * stride_gi) / P
    return coef_text, coef_image


@triton.jit
def _grad_dot(ds, other, acc, GRAD_IN_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc + ds @ other. dS is small: float16 would flush it to zero, so float16 and float32
    inputs keep it in float32 (tf32 on the tensor cores for float16: float16's mantissa, float32's
    range); bfloat16 has float32's range, so there dS goes to the tensor cores in bfloat16."""
    if GRAD_IN_FP32:
        return _dot(ds, other.to(tl.float32), acc, PRECISION)
    return _dot(ds.to(other.dtype), other, acc, PRECISION)


@triton.autotune(configs=_BWD_TEXT_CONFIGS, key=_KEY,
                 prune_configs_by={"early_config_prune": _pruner("BLOCK_T", "BLOCK_P", accumulator=True)})
@triton.jit
def _tier_bwd_text_kernel(
    text_ptr, image_ptr, mask_ptr, grad_text_ptr,
    row_lse_ptr, row_mean_ptr, col_lse_ptr, col_mean_ptr, num_valid_ptr, g_text_ptr, g_image_ptr,
    T, P, D, scale,
    stride_tn, stride_tt, stride_td,
    stride_in, stride_ip, stride_id,
    stride_mn, stride_mt, stride_gt, stride_gi,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, GRAD_IN_FP32: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)

    text = _load_rows(text_ptr + n * stride_tn, offs_t, offs_d, stride_tt, stride_td, T, D)
    token_ok = _token_validity(mask_ptr + n * stride_mn, offs_t, stride_mt, T, HAS_MASK)
    row_lse = tl.load(row_lse_ptr + n * T + offs_t, mask=offs_t < T, other=0.0)
    row_mean = tl.load(row_mean_ptr + n * T + offs_t, mask=offs_t < T, other=0.0)
    coef_text, coef_image = _grad_coefficients(g_text_ptr, g_image_ptr, num_valid_ptr, n, stride_gt, stride_gi, P)

    acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    for p_start in range(0, P, BLOCK_P):
        offs_p = p_start + tl.arange(0, BLOCK_P)
        patch_ok = offs_p < P
        image = _load_rows(image_ptr + n * stride_in, offs_p, offs_d, stride_ip, stride_id, P, D)
        s = scale * _dot(text, tl.trans(image), tl.zeros([BLOCK_T, BLOCK_P], tl.float32), PRECISION)
        col_lse = tl.load(col_lse_ptr + n * P + offs_p, mask=patch_ok, other=0.0)
        col_mean = tl.load(col_mean_ptr + n * P + offs_p, mask=patch_ok, other=0.0)
        ds = _score_grad(s, token_ok[:, None] & patch_ok[None, :], row_lse, row_mean, col_lse, col_mean,
                         coef_text, coef_image)
        acc = _grad_dot(ds, image, acc, GRAD_IN_FP32, PRECISION)

    ptrs = grad_text_ptr + n * T * D + offs_t[:, None] * D + offs_d[None, :]
    tl.store(ptrs, (scale * acc).to(grad_text_ptr.dtype.element_ty),
             mask=(offs_t[:, None] < T) & (offs_d[None, :] < D))


@triton.autotune(configs=_BWD_IMAGE_CONFIGS, key=_KEY,
                 prune_configs_by={"early_config_prune": _pruner("BLOCK_P", "BLOCK_T", accumulator=True)})
@triton.jit
def _tier_bwd_image_kernel(
    text_ptr, image_ptr, mask_ptr, grad_image_ptr,
    row_lse_ptr, row_mean_ptr, col_lse_ptr, col_mean_ptr, num_valid_ptr, g_text_ptr, g_image_ptr,
    T, P, D, scale,
    stride_tn, stride_tt, stride_td,
    stride_in, stride_ip, stride_id,
    stride_mn, stride_mt, stride_gt, stride_gi,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, GRAD_IN_FP32: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    patch_ok = offs_p < P

    image = _load_rows(image_ptr + n * stride_in, offs_p, offs_d, stride_ip, stride_id, P, D)
    col_lse = tl.load(col_lse_ptr + n * P + offs_p, mask=patch_ok, other=0.0)
    col_mean = tl.load(col_mean_ptr + n * P + offs_p, mask=patch_ok, other=0.0)
    coef_text, coef_image = _grad_coefficients(g_text_ptr, g_image_ptr, num_valid_ptr, n, stride_gt, stride_gi, P)

    acc = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
    for t_start in range(0, T, BLOCK_T):
        offs_t = t_start + tl.arange(0, BLOCK_T)
        text = _load_rows(text_ptr + n * stride_tn, offs_t, offs_d, stride_tt, stride_td, T, D)
        token_ok = _token_validity(mask_ptr + n * stride_mn, offs_t, stride_mt, T, HAS_MASK)
        row_lse = tl.load(row_lse_ptr + n * T + offs_t, mask=offs_t < T, other=0.0)
        row_mean = tl.load(row_mean_ptr + n * T + offs_t, mask=offs_t < T, other=0.0)
        s = scale * _dot(text, tl.trans(image), tl.zeros([BLOCK_T, BLOCK_P], tl.float32), PRECISION)
        ds = _score_grad(s, token_ok[:, None] & patch_ok[None, :], row_lse, row_mean, col_lse, col_mean,
                         coef_text, coef_image)
        acc = _grad_dot(tl.trans(ds), text, acc, GRAD_IN_FP32, PRECISION)

    ptrs = grad_image_ptr + n * P * D + offs_p[:, None] * D + offs_d[None, :]
    tl.store(ptrs, (scale * acc).to(grad_image_ptr.dtype.element_ty),
             mask=patch_ok[:, None] & (offs_d[None, :] < D))


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------


def _fwd_block_t(num_tokens: int, block_d: int) -> int:
    """Tokens per forward program: up to 64, fewer for wide D so the resident tile stays on chip."""
    if _INTERPRET:
        return 16
    return max(16, min(triton.next_power_of_2(num_tokens), 64, 16384 // block_d))


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs get float32 products, as the reference's matmul (tf32 would cost ~3 digits);
    # for float16 the setting only applies to the gradient dots (see _grad_dot).
    return "ieee" if dtype == torch.float32 else "tf32"


class TokenPatchEntropyFunction(torch.autograd.Function):
    """(h_text, h_image) of each pair; see the module docstring for the kernels it launches."""

    @staticmethod
    def forward(ctx, text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None,
                scale: float) -> tuple[Tensor, Tensor]:
        num_pairs, num_tokens, dim = text_tokens.shape
        num_patches = image_tokens.shape[1]
        device = text_tokens.device
        block_d = max(16, triton.next_power_of_2(dim))
        block_t = _fwd_block_t(num_tokens, block_d)
        num_t_blocks = triton.cdiv(num_tokens, block_t)
        # The mask is read as bytes (a bool tensor viewed as uint8 costs no copy); without one the
        # kernels never read the pointer, so any tensor will do.
        mask = text_mask.view(torch.uint8) if text_mask is not None else text_tokens
        mask_strides = text_mask.stride() if text_mask is not None else (0, 0)

        f32 = dict(device=device, dtype=torch.float32)
        row_lse = torch.empty(num_pairs, num_tokens, **f32)
        row_mean = torch.empty(num_pairs, num_tokens, **f32)
        parts = [torch.empty(num_pairs, num_t_blocks, num_patches, **f32) for _ in range(3)]
        col_lse = torch.empty(num_pairs, num_patches, **f32)
        col_mean = torch.empty(num_pairs, num_patches, **f32)
        h_text = torch.empty(num_pairs, **f32)
        h_image = torch.empty(num_pairs, **f32)
        num_valid = torch.empty(num_pairs, **f32)

        _tier_fwd_kernel[(num_pairs, num_t_blocks)](
            text_tokens, image_tokens, mask, row_lse, row_mean, *parts,
            num_tokens, num_patches, dim, num_t_blocks, scale,
            *text_tokens.stride(), *image_tokens.stride(), *mask_strides,
            HAS_MASK=text_mask is not None, PRECISION=_precision(text_tokens.dtype),
            BLOCK_T=block_t, BLOCK_D=block_d,
        )
        _tier_fwd_reduce_kernel[(num_pairs,)](
            mask, row_lse, row_mean, *parts, col_lse, col_mean, h_text, h_image, num_valid,
            num_tokens, num_patches, num_t_blocks, *mask_strides,
            HAS_MASK=text_mask is not None, BLOCK=128,
        )
        ctx.save_for_backward(text_tokens, image_tokens, text_mask, row_lse, row_mean, col_lse, col_mean, num_valid)
        ctx.scale = scale
        return h_text, h_image

    @staticmethod
    @once_differentiable  # the kernels' gradients are not themselves differentiable
    def backward(ctx, grad_h_text: Tensor, grad_h_image: Tensor):
        text_tokens, image_tokens, text_mask, row_lse, row_mean, col_lse, col_mean, num_valid = ctx.saved_tensors
        num_pairs, num_tokens, dim = text_tokens.shape
        num_patches = image_tokens.shape[1]
        mask = text_mask.view(torch.uint8) if text_mask is not None else text_tokens
        mask_strides = text_mask.stride() if text_mask is not None else (0, 0)
        # Upstream gradients of a .sum() arrive expanded (stride 0): strides are passed, not copied.
        args = (
            text_tokens, image_tokens, mask,
            None,  # the output, filled in per kernel
            row_lse, row_mean, col_lse, col_mean, num_valid, grad_h_text, grad_h_image,
            num_tokens, num_patches, dim, ctx.scale,
            *text_tokens.stride(), *image_tokens.stride(), *mask_strides,
            grad_h_text.stride(0), grad_h_image.stride(0),
        )
        meta = dict(
            HAS_MASK=text_mask is not None, PRECISION=_precision(text_tokens.dtype),
            GRAD_IN_FP32=text_tokens.dtype != torch.bfloat16, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        )
        grad_text = grad_image = None
        if ctx.needs_input_grad[0]:
            grad_text = torch.empty(num_pairs, num_tokens, dim, device=text_tokens.device, dtype=text_tokens.dtype)
            grid = lambda meta: (num_pairs, triton.cdiv(num_tokens, meta["BLOCK_T"]))  # noqa: E731
            _tier_bwd_text_kernel[grid](*args[:3], grad_text, *args[4:], **meta)
        if ctx.needs_input_grad[1]:
            grad_image = torch.empty(num_pairs, num_patches, dim, device=image_tokens.device, dtype=image_tokens.dtype)
            grid = lambda meta: (num_pairs, triton.cdiv(num_patches, meta["BLOCK_P"]))  # noqa: E731
            _tier_bwd_image_kernel[grid](*args[:3], grad_image, *args[4:], **meta)
        return grad_text, grad_image, None, None


def token_patch_entropy_triton(
    text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None = None, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Fused-kernel ``token_patch_entropy_reference``: (h_text, h_image), float32, shape (N,).

    text_tokens (N, T, D) and image_tokens (N, P, D) in float32, float16 or bfloat16 (mixed dtypes
    are promoted, like the reference), any strides; text_mask (N, T) bool, True = valid, or None.
    Gradients come back in each input's dtype.
    """
    dtype = torch.promote_types(text_tokens.dtype, image_tokens.dtype)
    if dtype not in _DTYPES:
        raise TypeError(f"the Triton kernel takes float32, float16 or bfloat16 tokens, got {dtype}; use impl='torch'")
    if not (text_tokens.is_cuda or _INTERPRET):
        raise RuntimeError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if text_tokens.shape[0] == 0:
        empty = text_tokens.new_zeros(0, dtype=torch.float32)
        return empty, empty.clone()
    if text_mask is not None:
        text_mask = text_mask.bool()
    # Casting outside the Function lets autograd hand each input its gradient in its own dtype.
    return TokenPatchEntropyFunction.apply(text_tokens.to(dtype), image_tokens.to(dtype), text_mask, float(scale))


_AUTOTUNED = {
    "forward": "_tier_fwd_kernel",
    "backward_text": "_tier_bwd_text_kernel",
    "backward_image": "_tier_bwd_image_kernel",
}


def autotune_choices() -> list[dict]:
    """The config each autotuned kernel chose, one entry per problem key it has met so far.

    For benchmark records: {"kernel", "T", "P", "D", "dtypes", "config", "candidates"}, where
    config holds the block sizes, num_warps and num_stages, and candidates is the list's length.
    Empty before the first launch, and in the interpreter (one fixed config, nothing tuned).
    """
    choices = []
    for label, name in _AUTOTUNED.items():
        kernel = globals()[name]
        for key, config in getattr(kernel, "cache", {}).items():
            t, p, d, *dtypes = key
            choices.append({
                "kernel": label, "T": t, "P": p, "D": d, "dtypes": [str(x) for x in dtypes],
                "config": {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages},
                "candidates": len(kernel.configs),
            })
    return choices
