"""The fused Triton TIER entropy (kernels/tier_entropy.py) against the torch reference, its spec.

Without a usable CUDA device the kernels run in Triton's CPU interpreter. triton.jit reads
TRITON_INTERPRET when it decorates: triton's own helpers (tl.zeros, …) at `import triton`, the
kernels when their module is imported. So this module does both imports with the variable set, and
sets it again only while its own tests run (the public dispatcher checks it at call time); the
rest of the session sees the environment unchanged. The interpreter is slow, so its shapes stay
small (T, P ≤ 40, D ≤ 64); its 16-wide blocks make them span several token and patch blocks.
With CUDA the same tests run compiled, and the `gpu` tests add full-size shapes.

Truth is the reference evaluated in float64 on exactly the kernel's input values, so a tolerance
measures the kernel's own rounding. Errors are relative to the largest entry of the expected
tensor, and allowed to be (see `tolerances`)
    5e-6 · max(1, |scale|)   float32 arithmetic: lse − E[s] cancels terms as large as |S| ≤ |scale|
                             (unit vectors); this is all of it for the forward of every dtype, since
                             products of float16/bfloat16 values are exact in float32;
  + 4e-3 (float16 gradients) the gradient dots run in float32 (tf32 on GPU, float16's mantissa) and
                             the result is rounded to float16;
  + 3e-2 (bfloat16 gradients) dS is rounded to bfloat16 (2⁻⁹) before the gradient dots, as
                             flash-attention does, and sums with cancellation amplify it.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tier_openclip.entropy import token_patch_entropy
from tier_openclip.kernels.reference import token_patch_entropy_reference

KERNEL_MODULE = "tier_openclip.kernels.tier_entropy"
COMPILED = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
DEVICE = "cuda" if COMPILED else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GRAD_ROUNDING = {torch.float32: 0.0, torch.float16: 4e-3, torch.bfloat16: 3e-2}  # see the module docstring


def tolerances(dtype: torch.dtype, scale: float) -> tuple[float, float]:
    """(forward, gradient) relative tolerances."""
    fp32 = 5e-6 * max(1.0, abs(scale))
    return fp32, fp32 + GRAD_ROUNDING[dtype]


gpu = pytest.mark.skipif(not COMPILED, reason="needs a CUDA device and compiled (not interpreted) Triton kernels")

if not COMPILED and "triton" not in sys.modules:
    with pytest.MonkeyPatch.context() as _mp:
        _mp.setenv("TRITON_INTERPRET", "1")
        pytest.importorskip("triton")
        sys.modules.pop(KERNEL_MODULE, None)  # an earlier import without the variable holds GPU-only kernels
        importlib.import_module(KERNEL_MODULE)
triton = pytest.importorskip("triton")


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """The kernel module; on CPU, with TRITON_INTERPRET=1 for the duration of these tests."""
    if COMPILED:
        yield importlib.import_module(KERNEL_MODULE)
        return
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton.language.zeros, InterpretedFunction):
        raise RuntimeError(
            "triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on CPU "
            "in this process: run pytest with TRITON_INTERPRET=1 in the environment"
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield importlib.import_module(KERNEL_MODULE)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    n: int
    t: int
    p: int
    d: int
    scale: float = 1.0
    mask: str = "random"  # "none" | "random" | "empty_pair" (the last pair has no valid token)
    layout: str = "contiguous"  # "contiguous" | "transposed" (stride_d ≠ 1) | "strided" (every other d)
    seed: int = 0


def _tokens(n: int, rows: int, d: int, g: torch.Generator, dtype: torch.dtype, device: str, layout: str):
    x = torch.randn(n, rows, d, generator=g)
    x = (x / x.norm(dim=-1, keepdim=True)).to(device=device, dtype=dtype)  # TIER compares unit vectors
    if layout == "transposed":  # same values, stride_d ≠ 1
        return torch.empty(n, d, rows, device=device, dtype=dtype).transpose(1, 2).copy_(x)
    if layout == "strided":  # same values, every other element of a wider buffer
        return torch.empty(n, rows, 2 * d, device=device, dtype=dtype)[:, :, ::2].copy_(x)
    return x


def make_inputs(case: Case, dtype: torch.dtype, device: str = DEVICE):
    """(text, image, mask, weights) with the requested layout; weights scale each pair's outputs."""
    g = torch.Generator().manual_seed(case.seed)
    text = _tokens(case.n, case.t, case.d, g, dtype, device, case.layout)
    image = _tokens(case.n, case.p, case.d, g, dtype, device, case.layout)
    if case.layout != "contiguous":  # a transposed (n, 1, d) tensor still counts as contiguous
        assert (not text.is_contiguous() or case.t == 1) and (not image.is_contiguous() or case.p == 1)
    mask = None
    if case.mask != "none":
        wide = torch.rand(case.n, 2 * case.t, generator=g) < 0.6
        mask = wide[:, ::2] if case.layout == "strided" else wide[:, : case.t].clone()
        mask[:, 0] = True
        if case.mask == "empty_pair":
            mask[-1] = False
        mask = mask.to(device)
    weights = torch.randn(2, case.n, generator=g, dtype=torch.float64).to(device)
    return text, image, mask, weights


def run(fn, text, image, mask, scale, weights):
    """Outputs and input gradients of fn for loss = Σ_n w_text[n]·h_text[n] + w_image[n]·h_image[n]."""
    text = text.detach().clone().requires_grad_()
    image = image.detach().clone().requires_grad_()
    h_text, h_image = fn(text, image, mask, scale)
    (weights[0] * h_text).sum().add((weights[1] * h_image).sum()).backward()
    return h_text.detach(), h_image.detach(), text.grad, image.grad


def kernel_fn(text, image, mask, scale):
    return sys.modules[KERNEL_MODULE].token_patch_entropy_triton(text, image, mask, scale)


def reference_fn(text, image, mask, scale):
    return token_patch_entropy_reference(text, image, mask, scale)


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> float:
    """Max error within tol of the largest expected entry; returns the fraction of the bound used."""
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    bound = tol * max(want.abs().max().item() if want.numel() else 0.0, 1e-3)
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"
    return err / bound


def check_against_reference(case: Case, dtype: torch.dtype, device: str = DEVICE) -> dict[str, float]:
    """Asserts the kernel matches the reference; returns each output's error over its bound."""
    text, image, mask, weights = make_inputs(case, dtype, device)
    got = run(kernel_fn, text, image, mask, case.scale, weights.float())
    # The truth: the reference in float64 on the very same (already rounded) input values.
    want = run(reference_fn, text.double(), image.double(), mask, case.scale, weights)
    fwd_tol, grad_tol = tolerances(dtype, case.scale)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == dtype
    used = {}
    for name, g, w, tol in zip(("h_text", "h_image", "d text", "d image"), got, want, (fwd_tol, fwd_tol, grad_tol, grad_tol)):
        used[name] = assert_close(g, w, tol, f"{name} {case} {dtype}")
    if mask is not None:  # masked tokens and pairs without tokens get exactly zero gradient
        assert torch.all(got[2][~mask] == 0)
        if case.mask == "empty_pair":
            assert got[0][-1] == 0 and got[1][-1] == 0 and torch.all(got[3][-1] == 0)
    return used


# ----------------------------------------------------------------------------------------------
# Against the reference, in the interpreter (or compiled on a GPU machine)
# ----------------------------------------------------------------------------------------------


@st.composite
def cases(draw) -> Case:
    return Case(
        n=draw(st.integers(1, 3)),
        t=draw(st.integers(1, 40)),
        p=draw(st.integers(1, 40)),
        d=draw(st.sampled_from([16, 24, 40, 64])),
        scale=draw(st.sampled_from([1.0, 0.5, 7.5, -3.0, 40.0])),
        mask=draw(st.sampled_from(["none", "random", "empty_pair"])),
        layout=draw(st.sampled_from(["contiguous", "transposed", "strided"])),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=15, derandomize=True, deadline=None)
@given(case=cases())
# The edge cases, every time: one token, one patch, both, D not a power of two, an empty pair,
# non-contiguous inputs, scale ≠ 1, several blocks in both directions with a masked tail.
@example(case=Case(n=2, t=1, p=7, d=24))
@example(case=Case(n=2, t=9, p=1, d=40, scale=2.0))
@example(case=Case(n=1, t=1, p=1, d=16, mask="none"))
@example(case=Case(n=3, t=33, p=35, d=40, scale=7.5, mask="empty_pair", layout="transposed"))
@example(case=Case(n=2, t=20, p=17, d=24, scale=-0.5, layout="strided"))
def test_matches_reference(dtype, case):
    check_against_reference(case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_dispatcher_triton_equals_torch(dtype):
    """token_patch_entropy(impl='triton') against impl='torch' on the same inputs and dtype."""
    case = Case(n=3, t=19, p=21, d=40, scale=2.5, mask="empty_pair", layout="transposed", seed=1)
    text, image, mask, weights = make_inputs(case, dtype)
    weights = weights.float()
    outs = {
        impl: run(lambda *a, impl=impl: token_patch_entropy(*a, impl=impl), text, image, mask, case.scale, weights)
        for impl in ("triton", "torch")
    }
    fwd_tol, grad_tol = tolerances(dtype, case.scale)
    # The reference's own gradients are rounded to the input dtype too (≤ eps/2 of the largest).
    grad_tol = grad_tol + torch.finfo(dtype).eps
    for i, name in enumerate(("h_text", "h_image", "d text", "d image")):
        assert outs["triton"][i].dtype == outs["torch"][i].dtype
        assert_close(outs["triton"][i], outs["torch"][i], fwd_tol if i < 2 else grad_tol, f"{name} {dtype}")


def test_known_values():
    """Uniform similarities give log(set size) in each direction; scores without a tie are exact."""
    text = torch.zeros(2, 5, 16, device=DEVICE)
    image = torch.randn(2, 7, 16, device=DEVICE)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool, device=DEVICE)
    h_text, h_image = kernel_fn(text, image, mask, 1.0)
    torch.testing.assert_close(h_text, torch.tensor([math.log(7), 0.0], device=DEVICE))
    torch.testing.assert_close(h_image, torch.tensor([math.log(3), 0.0], device=DEVICE))


def test_masked_tokens_and_empty_pairs_give_zeros_not_nans():
    case = Case(n=3, t=18, p=20, d=24, scale=40.0, mask="empty_pair", seed=3)
    text, image, mask, weights = make_inputs(case, torch.float32)
    mask[0, 1:] = False  # pair 0: a single valid token
    h_text, h_image, d_text, d_image = run(kernel_fn, text, image, mask, case.scale, weights.float())
    for x in (h_text, h_image, d_text, d_image):
        assert torch.isfinite(x).all()
    assert h_text[2] == 0 and h_image[2] == 0
    assert torch.all(d_text[2] == 0) and torch.all(d_image[2] == 0)
    assert torch.all(d_text[~mask] == 0)
    assert h_image[0] == 0  # one valid token: every patch's softmax over tokens is certain


def test_gradients_are_deterministic_and_one_sided_backward_works():
    case = Case(n=2, t=20, p=18, d=40, mask="random", seed=4)
    text, image, mask, weights = make_inputs(case, torch.float32)
    first = run(kernel_fn, text, image, mask, 1.0, weights.float())
    second = run(kernel_fn, text, image, mask, 1.0, weights.float())
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # no atomics: bitwise reproducible
    # Only the image side requires grad: the text-gradient kernel is skipped, the other unchanged.
    image_only = image.detach().clone().requires_grad_()
    h_text, h_image = kernel_fn(text, image_only, mask, 1.0)
    (weights[0].float() * h_text + weights[1].float() * h_image).sum().backward()
    assert torch.equal(image_only.grad, first[3])


def test_saves_only_per_token_and_per_patch_statistics():
    """Nothing of size N·T·P is kept for backward: only the inputs and O(N·(T+P)) statistics."""
    n, t, p, d = 2, 24, 30, 16
    text = torch.randn(n, t, d, device=DEVICE, requires_grad=True)
    image = torch.randn(n, p, d, device=DEVICE, requires_grad=True)
    h_text, _ = kernel_fn(text, image, None, 1.0)
    saved = [x for x in h_text.grad_fn.saved_tensors if x is not None]
    statistics = [x for x in saved if x.data_ptr() not in (text.data_ptr(), image.data_ptr())]
    assert sum(x.numel() for x in statistics) <= 2 * n * (t + p) + n < n * t * p


def test_mixed_dtypes_are_promoted_and_gradients_keep_each_dtype():
    case = Case(n=2, t=9, p=11, d=24, seed=5)
    text, image, mask, weights = make_inputs(case, torch.float32)
    text_bf16 = text.bfloat16()
    got = run(kernel_fn, text_bf16, image, mask, 1.0, weights.float())
    want = run(reference_fn, text_bf16.double(), image.double(), mask, 1.0, weights)
    assert got[2].dtype == torch.bfloat16 and got[3].dtype == torch.float32
    for g, w in zip(got, want):
        assert_close(g, w, 1e-2, "mixed bf16/fp32")  # float32 compute; d text rounded to bfloat16


def test_a_triton_without_knobs_is_not_used(monkeypatch):
    """triton < 3.4 has no triton.knobs, which the kernel module imports: neither 'auto' nor an
    explicit 'triton' may pick a kernel that cannot import."""
    from tier_openclip.entropy import resolve_impl

    x = torch.zeros(1, 2, 16, device=DEVICE)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # makes CPU tensors eligible; a no-op for CUDA ones
    assert resolve_impl("triton", x) == "triton"
    monkeypatch.delattr(triton, "knobs")
    monkeypatch.setitem(sys.modules, "triton.knobs", None)  # what importing it does on triton 3.3
    with pytest.raises(RuntimeError, match="impl='torch'"):
        resolve_impl("triton", x)
    assert resolve_impl("auto", x) == "torch"


def test_float64_is_refused_with_a_pointer_to_the_reference():
    x = torch.randn(1, 2, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="impl='torch'"):
        kernel_fn(x, x, None, 1.0)


# ----------------------------------------------------------------------------------------------
# Full size, compiled, on a GPU
# ----------------------------------------------------------------------------------------------

# Each (case, dtype) is a fresh compile of every autotune config (a GPU machine starts with a cold
# cache, ~10 kernels a variant), so the full-size check takes the dtypes where they matter: all
# three at the headline-like shape, float32 and bfloat16 at the largest, one each elsewhere. The
# interpreter tests above cover every dtype × layout × mask at small sizes.
GPU_CASES = [
    (Case(n=64, t=128, p=196, d=512, mask="empty_pair"), DTYPES),  # ViT-B/16 patches, CLIP-length reports
    (Case(n=32, t=77, p=49, d=768, scale=7.5, mask="random", layout="transposed"), [torch.bfloat16]),
    (Case(n=4, t=512, p=1024, d=1024, mask="random"), [torch.float32, torch.bfloat16]),  # the largest supported
    (Case(n=16, t=100, p=257, d=200, scale=-2.0, mask="empty_pair", layout="strided"), [torch.float16]),
    (Case(n=8, t=1, p=1, d=16, mask="none"), [torch.float32]),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("case", "dtype"), [
    pytest.param(case, dtype, id=f"{case.n}x{case.t}x{case.p}x{case.d}-{dtype}")
    for case, dtypes in GPU_CASES for dtype in dtypes
])
def test_full_size_matches_reference_on_gpu(case, dtype, record_property):
    for name, fraction in check_against_reference(case, dtype, device="cuda").items():
        record_property(f"{name} error / bound", round(fraction, 4))


@pytest.mark.gpu
@gpu
def test_no_similarity_sized_buffer_on_gpu(record_property):
    """Peak extra memory of forward + backward: the two gradients and small statistics, no N·T·P."""
    n, t, p, d = 64, 128, 196, 512
    text = torch.randn(n, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    image = torch.randn(n, p, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kernel_fn(text, image, None, 1.0)[0].sum().backward()  # autotune outside the measurement
    text.grad = image.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    h_text, h_image = kernel_fn(text, image, None, 1.0)
    (h_text + h_image).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    gradients = (text.numel() + image.numel()) * text.element_size()
    record_property("peak extra bytes", extra)
    record_property("gradient bytes", gradients)
    assert extra <= gradients + 64 * n * (t + p) + (1 << 20), extra
    assert extra < gradients + n * t * p * 4  # an N·T·P float32 buffer would not fit
