"""vr_persistence and pairwise_distance take float16/bfloat16 as tsloss_cuda.loss does: computed
in float32, float32 results, gradients back to the half-precision input."""
import pytest
import torch

from tsloss_cuda import loss, pairwise_distance, vr_persistence


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_equals_its_float32_widening(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 16, generator=g).to(dtype)
    dg = vr_persistence(x)
    ref = vr_persistence(x.float())
    assert dg.h0.dtype == torch.float32 and dg.h1.dtype == torch.float32
    for a, b in zip((dg.h0, dg.h0_edges, dg.h1, dg.h1_edges, dg.h1_count, dg.truncated),
                    (ref.h0, ref.h0_edges, ref.h1, ref.h1_edges, ref.h1_count, ref.truncated)):
        assert torch.equal(a, b)
    d = pairwise_distance(x)
    assert d.dtype == torch.float32 and torch.equal(d, pairwise_distance(x.float()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_gets_gradients(dtype):
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(1)).to(dtype).requires_grad_()
    dg = vr_persistence(x)
    (dg.h0[..., 1].sum() + (dg.h1[..., 1] - dg.h1[..., 0]).sum()).backward()
    assert x.grad is not None and x.grad.dtype == dtype and x.grad.abs().sum() > 0
    xf = x.detach().float().requires_grad_()
    dgf = vr_persistence(xf)
    (dgf.h0[..., 1].sum() + (dgf.h1[..., 1] - dgf.h1[..., 0]).sum()).backward()
    torch.testing.assert_close(x.grad, xf.grad.to(dtype))


def test_half_input_matches_the_loss_on_the_same_points():
    """The loss computes half inputs in float32; the diagram it uses is vr_persistence's."""
    x = torch.randn(9, 8, generator=torch.Generator().manual_seed(2)).half()
    _, terms = loss(x, return_terms=True)
    deaths = vr_persistence(x).h0[0, :, 1]
    scale = pairwise_distance(x)[0].sum() / (9 * 8)
    torch.testing.assert_close(terms["connectivity"], (deaths / scale).mean())


def test_other_dtypes_are_refused_by_name():
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        vr_persistence(torch.ones(4, 3, dtype=torch.int32))
