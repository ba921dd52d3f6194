"""Pulling the next GEMV's weights into L2 (model/l2_prefetch.py): the byte ranges a kernel is given, which
linears have any, and on CUDA that a prefetching decode attention computes what the plain one does."""

from __future__ import annotations

import pytest
import torch

from pixdesk.model import l2_prefetch
from pixdesk.model.quant import Int4Linear, Int8Linear


def test_span_of_a_permuted_dense_tensor_is_its_bytes():
    t = torch.empty(32, 5120, 64, dtype=torch.uint8).transpose(0, 1)  # Int4Linear's group-major words
    assert l2_prefetch.span_bytes(t) == 32 * 5120 * 64
    s = torch.empty(32, 5120, dtype=torch.bfloat16).t()
    assert l2_prefetch.span_bytes(s) == 32 * 5120 * 2
    assert l2_prefetch.span_bytes(torch.empty(0)) == 0
    assert l2_prefetch.span_bytes(torch.empty(10, 8)[:, :3]) == (9 * 8 + 3) * 4  # first to past the last


def test_kernel_args_fill_unused_slots_with_the_placeholder():
    a, b, placeholder = torch.empty(100, dtype=torch.uint8), torch.empty(7, dtype=torch.bfloat16), torch.empty(1)
    args = l2_prefetch.kernel_args([a, b], placeholder)
    assert args["N_PREFETCH"] == 2
    assert args["pf0"] is a and args["pf0_bytes"] == 100 and args["pf1"] is b and args["pf1_bytes"] == 14
    assert args["pf2"] is placeholder and args["pf2_bytes"] == 0
    assert l2_prefetch.kernel_args([], placeholder)["N_PREFETCH"] == 0
    with pytest.raises(ValueError, match="at most 3"):
        l2_prefetch.kernel_args([a] * 4, placeholder)


def test_only_a_cuda_int4_linear_is_prefetched():
    w = torch.randn(256, 256)
    assert l2_prefetch.targets(Int4Linear.from_float(w)) == []  # on the CPU: nothing to prefetch
    assert l2_prefetch.targets(Int8Linear.from_float(w)) == []
    assert l2_prefetch.targets(torch.nn.Linear(4, 4)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetching_attention_matches_the_plain_kernel_cuda():
    from pixdesk.engine.decode_attention import decode_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    wo = Int4Linear.from_float(torch.randn(5120, 4096, device="cuda", generator=g))
    assert [t.data_ptr() for t in l2_prefetch.targets(wo)] == [wo.qweight.data_ptr(), wo.scales.data_ptr(),
                                                              wo.mins.data_ptr()]  # fmt: skip
    k = torch.randn(1, 4352, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    q = torch.randn(1, 32, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    lengths = torch.tensor([4311], device="cuda")
    plain = decode_attention(q, k, v, lengths, 4352, [])
    assert torch.equal(decode_attention(q, k, v, lengths, 4352, l2_prefetch.targets(wo)), plain)
