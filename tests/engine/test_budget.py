"""Automatic image-token budget: a request that would not fit gets smaller images instead of a refusal."""

from __future__ import annotations

import pytest

from pixdesk.engine.budget import fit_images
from pixdesk.engine.sampling import SamplingParams
from pixdesk.errors import ContextLengthExceeded
from pixdesk.tokenizer.image import IMG_ID

from .helpers import Run, engine, image, user


def test_fit_keeps_text_and_order_and_shrinks_every_grid(tiny):
    from pixdesk.tokenizer.chat import encode_instruct

    prompt = encode_instruct(
        tiny.tokenizer, [user("Look:", image(10, 12, 1), "and", image(4, 4, 2), "compare")]
    )
    fitted = fit_images(prompt, max_tokens=100, context=220, patch=16)
    assert fitted is not None and len(fitted.ids) + 100 <= 220
    text = [t for t in prompt.ids if t not in (10, 12, 13)]
    assert [t for t in fitted.ids if t not in (10, 12, 13)] == text  # the words are untouched
    assert sum(1 for t in fitted.ids if t == IMG_ID) == sum(i.n_patches for i in fitted.images)
    for old, new in zip(prompt.images, fitted.images):
        assert new.rows <= old.rows and new.cols <= old.cols and new.digest != old.digest
        assert new.pixels.shape == (3, new.rows * 16, new.cols * 16)
    assert fit_images(prompt, max_tokens=100, context=10_000, patch=16) is None  # fits already
    assert fit_images(prompt, max_tokens=100, context=110, patch=16) is None  # even 1x1 grids do not


def test_engine_answers_with_smaller_images_instead_of_refusing(tiny):
    with engine(tiny, max_context=200) as eng:
        prompt = eng.encode_chat([user(image(10, 12, 3), "What is this?")])
        assert len(prompt.ids) + 100 > 200
        sub = eng.submit(prompt, SamplingParams(max_tokens=100))
        assert sub.notes and "scaled down" in sub.notes[0]
        run = Run(sub).wait()
        assert run.finish.reason == "length" and run.finish.usage.prompt_tokens + 100 <= 200
        with pytest.raises(ContextLengthExceeded):  # text alone cannot be shrunk
            eng.submit(eng.encode_chat([user("word " * 150)]), SamplingParams(max_tokens=100))
