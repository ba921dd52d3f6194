"""Logits parity with transformers' LlavaForConditionalGeneration (fp32, CPU), and planted bugs that break it.

The HF checkpoint is written by transformers' own save_pretrained; the native one is derived from it
independently of our loader. Both load through pixdesk.weights and must match the oracle.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pixdesk.engine.cache import KVCache
from pixdesk.model import vision as vision_mod
from pixdesk.model.args import ModelArgs, TextArgs, VisionArgs
from pixdesk.model.rope import inv_freq
from pixdesk.tokenizer.image import image_token_ids
from pixdesk.weights import load as load_mod
from pixdesk.weights.load import build_model, find_checkpoint
from pixdesk.weights.tiny import random_state_dict

from .hf_oracle import hf_logits, hf_model, native_from_hf_dir

TEXT = TextArgs(dim=48, n_layers=2, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2, vocab_size=2048)
# Patch 16 with up to 8x8 patches, and patch 4 with up to 6x6 patches (different head counts too).
CONFIGS = {
    "p16": ModelArgs(TEXT, VisionArgs(32, 3, 128, 16, 64, 2, 2)),
    "p4": ModelArgs(
        replace(TEXT, n_heads=6, n_kv_heads=3, head_dim=8), VisionArgs(48, 3, 24, 4, 96, 3, 4, rope_theta=1e4)
    ),
}
TOL = 1e-4


def _image(rows: int, cols: int, patch: int, seed: int) -> torch.Tensor:
    return torch.randn(3, rows * patch, cols * patch, generator=torch.Generator().manual_seed(seed))


def _prompt(args: ModelArgs, grids: list[tuple[int, int]], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(1000, args.text.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    ids, images = [1, 3] + text(3), []
    for i, (r, c) in enumerate(grids):
        ids += image_token_ids(r, c) + text(2 + i)
        images.append(_image(r, c, args.vision.patch_size, seed + 10 + i))
    return ids + [4], images


def ours(model, ids: list[int], images: list[torch.Tensor]) -> torch.Tensor:
    cache = KVCache.for_model(model, n_slots=1, max_len=len(ids))
    with torch.no_grad():
        feats = model.encode_images(images) if images else None
        h = model.embed(torch.tensor([ids]), feats)
        pos = torch.arange(len(ids))[None]
        return model.logits(model(h, pos, cache.view(torch.tensor([0]), pos)))[0]


def _cases(args: ModelArgs) -> dict[str, list[tuple[int, int]]]:
    full = args.vision.max_patches_per_side
    return {
        "text_only": [],
        "non_square": [(3, 5)],
        "two_sizes": [(3, 5), (4, 2)],
        "full_grid": [(full, full)],
    }


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request, tmp_path_factory):
    args = CONFIGS[request.param]
    state = random_state_dict(args, seed=7)
    ref = hf_model(args, state)
    hf_dir = tmp_path_factory.mktemp(f"hf_{request.param}")
    ref.save_pretrained(hf_dir)
    native_dir = native_from_hf_dir(hf_dir, tmp_path_factory.mktemp(f"native_{request.param}"))
    return args, ref, hf_dir, native_dir


def _max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("case", ["text_only", "non_square", "two_sizes", "full_grid"])
def test_logits_match_transformers_in_both_layouts(setup, case):
    args, ref, hf_dir, native_dir = setup
    ids, images = _prompt(args, _cases(args)[case])
    want = hf_logits(ref, ids, images)
    for d in (hf_dir, native_dir):
        model = build_model(find_checkpoint(d))
        assert _max_rel_err(ours(model, ids, images), want) <= TOL, d


def test_vision_features_match_transformers(setup):
    args, ref, hf_dir, _ = setup
    images = [_image(3, 5, args.vision.patch_size, 1), _image(2, 4, args.vision.patch_size, 2)]
    model = build_model(find_checkpoint(hf_dir))
    with torch.no_grad():
        got = model.encode_images(images)
        sizes = torch.tensor([list(i.shape[1:]) for i in images])
        pix = torch.zeros(2, 3, max(s[0] for s in sizes), max(s[1] for s in sizes))
        for n, img in enumerate(images):
            pix[n, :, : img.shape[1], : img.shape[2]] = img
        want = ref.model.get_image_features(pixel_values=pix, image_sizes=sizes)
        want = torch.cat(list(want.pooler_output if hasattr(want, "pooler_output") else want))
    assert got.shape == want.shape
    assert _max_rel_err(got, want) <= TOL


# ------------------------------------------------------------------------------------------ planted bugs


def _swapped_angles(rows, cols, head_dim, theta, device=None):
    omega = inv_freq(head_dim, theta, device)
    r = torch.arange(rows, dtype=torch.float32)[:, None] * omega[1::2][None]  # height on the odd ones: wrong
    c = torch.arange(cols, dtype=torch.float32)[:, None] * omega[0::2][None]
    grid = torch.cat([r[:, None].expand(rows, cols, -1), c[None].expand(rows, cols, -1)], -1)
    return grid.reshape(rows * cols, head_dim // 2)


def _no_restart_rope(self, grids, device):
    # Positions taken over the packed sequence with the first image's width (no restart per image). A
    # uniform shift of one image's positions would be invisible (RoPE is relative within a block), but
    # this wraps the second image's rows differently, as a packed-sequence bug does.
    a = self.args
    width = grids[0][1]
    total = sum(h * w for h, w in grids)
    full = vision_mod.vision_angles(-(-total // width), width, a.head_dim, a.rope_theta)
    return vision_mod.rope_tables(full[:total][None])


PLANTED = {
    "hw_swapped": ("vision_angles", _swapped_angles, vision_mod),
    "no_vision_qk_permute": (
        "qk_heads",
        lambda name, args: None if name.startswith("vision") else load_mod.layouts_qk_heads(name, args),
        load_mod,
    ),
    "no_position_restart": ("_rope", _no_restart_rope, vision_mod.VisionEncoder),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_breaks_parity(setup, bug, monkeypatch):
    args, ref, hf_dir, _ = setup
    ids, images = _prompt(args, _cases(args)["two_sizes"])
    want = hf_logits(ref, ids, images)
    model_ok = build_model(find_checkpoint(hf_dir))
    assert _max_rel_err(ours(model_ok, ids, images), want) <= TOL
    attr, fake, owner = PLANTED[bug]
    monkeypatch.setattr(load_mod, "layouts_qk_heads", load_mod.qk_heads, raising=False)
    monkeypatch.setattr(owner, attr, fake)
    model_bad = build_model(find_checkpoint(hf_dir))
    assert _max_rel_err(ours(model_bad, ids, images), want) > 100 * TOL
