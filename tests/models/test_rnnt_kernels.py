"""Triton lattice kernels and the exact fused RNN-T loss against torchaudio's rnnt_loss and the PyTorch paths.

On a CPU the Triton kernels run in Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1``
when there is no GPU) at tiny shapes; on a GPU (``pytest -m gpu``) the same tests run compiled kernels
at real shapes. Tolerances: float64 against float64, 1e-9; float32 against torchaudio (float32, a
different summation order), rtol 1e-5 on values and 1e-4 on gradients.
"""

import os

import pytest
import torch
import torchaudio.functional as AF

from speechkit.lego.transducer import Joiner
from speechkit.models.fused_rnnt import fused_rnnt_loss, joint_arcs
from speechkit.models.pruned_rnnt import pruned_rnnt_loss
from speechkit.models.rnnt_lattice import lattice_logprob
from speechkit.models.transducer import joiner_rnnt_loss

INTERPRETED = pytest.mark.skipif(not os.environ.get("TRITON_INTERPRET"),
                                 reason="Triton runs CPU tensors only under TRITON_INTERPRET=1 (no GPU here)")
# (device, B, T, U, V+1): tiny through the interpreter on CPU, real shapes compiled on a GPU
SHAPES = [pytest.param("cpu", 3, 12, 5, 11, marks=INTERPRETED, id="cpu-interpreted"),
          pytest.param("cuda", 8, 300, 80, 501, marks=pytest.mark.gpu, id="cuda")]


def _lengths(b: int, t: int, u: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unequal lengths: the longest, a short one with no label, one with a single frame."""
    frames = torch.randint(max(1, t // 2), t + 1, (b,))
    labels = torch.randint(1, u + 1, (b,))
    frames[0], labels[0], labels[1] = t, u, 0
    frames[-1], labels[-1] = 1, min(u, 3)  # every label inside the only frame
    return frames.to(device), labels.to(device)


def _arcs(b, t, u, device, dtype):
    """Random arc log-probs with garbage (large values) outside each utterance's lattice."""
    logp = torch.randn(b, t, u + 1, 2, dtype=dtype, device=device).log_softmax(-1) - 1.0
    frames, labels = _lengths(b, t, u, device)
    t_idx, u_idx = torch.arange(t, device=device)[:, None], torch.arange(u + 1, device=device)
    outside = (t_idx >= frames[:, None, None]) | (u_idx > labels[:, None, None])
    logp = logp.masked_fill(outside[..., None], 50.0)
    px, py = (x.contiguous().requires_grad_() for x in logp.unbind(-1))
    return px, py, frames, labels


@pytest.mark.parametrize("device, b, t, u, v1", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_lattice_equals_the_pytorch_recursion_values_and_gradients(device, b, t, u, v1, dtype):
    torch.manual_seed(0)
    px, py, frames, labels = _arcs(b, t, u, device, dtype)
    ours = lattice_logprob(px, py, frames, labels, backend="triton")
    ref = lattice_logprob(px, py, frames, labels, backend="torch")  # float64 inside
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(ours, ref.to(dtype), **tol)
    occupancy = torch.autograd.grad(ours.sum(), (px, py))
    for a, r in zip(occupancy, torch.autograd.grad(ref.sum(), (px, py))):
        torch.testing.assert_close(a, r.to(dtype), **tol)  # zero outside the lattice in both
    blanks = occupancy[1].sum((1, 2))  # every alignment takes exactly T_b blanks, U_b labels
    torch.testing.assert_close(blanks, frames.to(dtype), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(occupancy[0].sum((1, 2)), labels.to(dtype), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device, b, t, u, v1", SHAPES)
def test_triton_lattice_on_log_softmax_logits_equals_torchaudio(device, b, t, u, v1):
    torch.manual_seed(1)
    logits = torch.randn(b, t, u + 1, v1, device=device, requires_grad=True)
    y = torch.randint(0, v1 - 1, (b, u), device=device)
    frames, labels = _lengths(b, t, u, device)
    ref = AF.rnnt_loss(logits, y.int(), frames.int(), labels.int(), blank=v1 - 1, reduction="none")
    logp = logits.log_softmax(-1)
    y1 = torch.cat([y, y.new_zeros(b, 1)], 1)[:, None, :, None].expand(-1, t, -1, -1)
    ours = -lattice_logprob(logp.gather(3, y1)[..., 0], logp[..., -1], frames, labels, backend="triton")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    g_ours, g_ref = (torch.autograd.grad(x.sum(), logits)[0] for x in (ours, ref))
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)


def _joiner_inputs(device, b, t, u, v1, seed=0):
    torch.manual_seed(seed)
    joiner = Joiner(32, 24, v1 - 1, 48).to(device)
    enc = torch.randn(b, t, 32, device=device, requires_grad=True)
    pred = torch.randn(b, u + 1, 24, device=device, requires_grad=True)
    y = torch.randint(0, v1 - 1, (b, u), device=device)
    return joiner, enc, pred, y, *_lengths(b, t, u, device)


@pytest.mark.parametrize("device, b, t, u, v1", SHAPES)
def test_pruned_loss_through_triton_equals_the_pytorch_path_and_full_windows_torchaudio(device, b, t, u, v1):
    joiner, enc, pred, y, frames, labels = _joiner_inputs(device, b, t, u, v1)
    simple = torch.nn.Linear(32, v1).to(device), torch.nn.Linear(24, v1).to(device)
    params = (enc, pred, *joiner.parameters(), *simple[0].parameters(), *simple[1].parameters())

    def loss(s, backend):
        out = pruned_rnnt_loss(joiner, enc, pred, simple[0](enc), simple[1](pred), y, frames, labels, v1 - 1,
                               s, lm_only_scale=0.25, backend=backend)
        return out, torch.autograd.grad((0.5 * out[0] + out[1]).sum(), params)

    (s_tr, p_tr), g_tr = loss(3, "triton")
    (s_pt, p_pt), g_pt = loss(3, "torch")
    torch.testing.assert_close(s_tr, s_pt.float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(p_tr, p_pt.float(), rtol=1e-5, atol=1e-4)
    for a, r in zip(g_tr, g_pt):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    _, full = pruned_rnnt_loss(joiner, enc, pred, simple[0](enc), simple[1](pred), y, frames, labels, v1 - 1,
                               u + 1, backend="triton")
    torch.testing.assert_close(full, joiner_rnnt_loss(joiner, enc, pred, y, frames, labels, v1 - 1),
                               rtol=1e-5, atol=1e-4)


FUSED = [pytest.param("cpu", "torch", 3, 12, 5, 11, id="cpu-torch"), *[
    pytest.param(p.values[0], "triton", *p.values[1:], marks=p.marks, id=p.id) for p in SHAPES]]


@pytest.mark.parametrize("device, backend, b, t, u, v1", FUSED)
def test_fused_loss_equals_torchaudio_values_and_gradients_in_tiles(device, backend, b, t, u, v1):
    joiner, enc, pred, y, frames, labels = _joiner_inputs(device, b, t, u, v1, seed=2)
    params = (enc, pred, *joiner.parameters())
    ref = joiner_rnnt_loss(joiner, enc, pred, y, frames, labels, v1 - 1)
    g_ref = torch.autograd.grad(ref.sum(), params)
    for tile in (1, b * (u + 1) * v1 * 3, 1 << 30):  # a frame per tile, 3 frames per tile, one tile
        ours = fused_rnnt_loss(joiner, enc, pred, y, frames, labels, v1 - 1, tile_elems=tile, backend=backend)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
        for a, r in zip(torch.autograd.grad(ours.sum(), params), g_ref):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device, backend, b, t, u, v1", [
    pytest.param("cpu", "torch", 2, 8, 4, 11, id="cpu-torch"),
    pytest.param("cpu", "triton", 2, 8, 4, 11, marks=INTERPRETED, id="cpu-interpreted"),
    pytest.param("cuda", "triton", 8, 300, 80, 501, marks=pytest.mark.gpu, id="cuda")])
def test_fused_loss_under_bf16_autocast_stays_near_float32(device, backend, b, t, u, v1):
    joiner, enc, pred, y, frames, labels = _joiner_inputs(device, b, t, u, v1, seed=3)
    ref = fused_rnnt_loss(joiner, enc, pred, y, frames, labels, v1 - 1)
    with torch.autocast(device, dtype=torch.bfloat16):
        px, py = joint_arcs(joiner, enc, pred, torch.cat([y, y[:, :1]], 1), v1 - 1, backend=backend)
        ours = fused_rnnt_loss(joiner, enc, pred, y, frames, labels, v1 - 1, backend=backend)
    assert px.dtype == py.dtype == torch.float32  # the normaliser and the arcs stay in float32
    torch.testing.assert_close(ours, ref, rtol=2e-2, atol=0.5)  # bf16 joiner matmuls: ~3 significant digits
    g = torch.autograd.grad(ours.sum(), joiner.out.weight)[0]
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


@pytest.mark.gpu
def test_fused_loss_peak_memory_is_a_fraction_of_torchaudios():
    b, t, u, v1 = 8, 400, 100, 1001
    stats = {}
    for kind in ("torchaudio", "fused"):
        joiner, enc, pred, y, frames, labels = _joiner_inputs("cuda", b, t, u, v1)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = (joiner_rnnt_loss if kind == "torchaudio" else fused_rnnt_loss)(joiner, enc, pred, y, frames,
                                                                               labels, v1 - 1)
        loss.sum().backward()
        torch.cuda.synchronize()
        stats[kind] = torch.cuda.max_memory_allocated() - base
    assert stats["fused"] < 0.25 * stats["torchaudio"], stats  # a 64 MB tile against a 1.3 GB lattice


def test_transducer_with_the_fused_loss_matches_torchaudios_loss_and_gradients():
    from conftest import tiny_transducer

    from speechkit.models.transducer import Transducer

    base = tiny_transducer()
    x, lens = torch.randn(2, 80, 80), torch.tensor([80, 64])
    y, ylens = torch.randint(0, 40, (2, 4)), torch.tensor([4, 3])
    losses, grads = {}, {}
    for impl in ("torchaudio", "fused"):
        m = Transducer(base.encoder, base.predictor, base.joiner, rnnt_impl=impl).eval()
        m.zero_grad()
        losses[impl] = m.loss(x, lens, y, ylens)["rnnt"]
        losses[impl].backward()
        grads[impl] = [p.grad.clone() for p in m.parameters() if p.grad is not None]
    torch.testing.assert_close(losses["fused"], losses["torchaudio"], rtol=1e-5, atol=1e-4)
    for a, r in zip(grads["fused"], grads["torchaudio"], strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="rnnt_impl"):
        Transducer(base.encoder, base.predictor, base.joiner, rnnt_impl="k2")
    with pytest.raises(ValueError, match="loss backend"):
        zeros = torch.zeros(1, 1, 1)
        lattice_logprob(zeros, zeros, torch.ones(1), torch.zeros(1), backend="cuda")


COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from speechkit.models import rnnt_triton as K

lattice = {"px": "*{f}", "py": "*{f}", "frames": "*i32", "labels": "*i32", "out": "*{f}"}
rows = {"z": "*{f}", "y": "*i64", "lse": "*fp32", "a": "*fp32", "b": "*fp32", "V1": "i32", "blank": "i32"}
cases = [(K._alpha_kernel, {**lattice, "logz": "*{f}", "T": "i32", "U1": "i32"}, "BLOCK", ("fp32", "fp64")),
         (K._beta_kernel, {**lattice, "T": "i32", "U1": "i32"}, "BLOCK", ("fp32", "fp64")),
         (K._arcs_kernel, rows, "BLOCK_V", ("fp32", "bf16", "fp16")),
         (K._arcs_grad_kernel, rows, "BLOCK_V", ("fp32", "bf16", "fp16"))]
for arch in (80, 90):
    for kernel, sig, block, dtypes in cases:
        for f in dtypes:
            types = [t.format(f=f) for t in sig.values()] + ["constexpr"]
            assert len(types) == len(kernel.arg_names), kernel.arg_names
            src = ASTSource(fn=kernel, signature=dict(zip(kernel.arg_names, types)), constexprs={block: 128})
            assert "cubin" in triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm
            print(kernel.fn.__name__, arch, f, "ok")
"""


def test_triton_kernels_compile_for_a100_and_h100_without_a_gpu(tmp_path):
    """The interpreter runs what a GPU would reject (a non-constexpr global, a loop-carried type change):
    every kernel is compiled to sm_80 and sm_90 cubin here, with the ptxas that ships with Triton."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compiled here, not found in a cache
    p = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count(" ok") == 2 * (2 + 2 + 3 + 3), p.stdout
