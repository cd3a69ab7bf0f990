"""The engine's public behaviour on the tiny checkpoint (CPU, float32 unless said otherwise).

What is checked here: the kind of output each mode returns, that a record's output depends only on its input,
its seed and the config (never on its batch: bitwise on CPU), determinism and seed sensitivity, the effect of
each sampling option, config/checkpoint errors at construction, and per-record error isolation.
The numerical agreement with diffusers' pipeline is in test_reference.py.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unidiffuser import CheckpointError, EngineConfig, EngineConfigError, Mode, Result, UniDiffuserEngine

STEPS = 4
RES = 64

PROMPTS = [
    "a red circle on a grey background",
    "x",
    "two dogs playing in the snow at dusk",
    "a tiny boat",
    "the quick brown fox jumps over the lazy dog",
]
SEEDS = [11, 3, 11, 12345678901, 7]  # a repeated seed on purpose: records must not share generators


def _rng_image(seed: int, shape=(RES, RES, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# images of several forms and sizes: array, PNG bytes, PIL, non-square (resized + cropped)
IMAGES = [
    _rng_image(0),
    _png(_rng_image(1)),
    Image.fromarray(_rng_image(2)),
    _rng_image(3, (80, 100, 3)),
    _rng_image(4),
]


def _key(result: Result) -> tuple:
    """Everything a result holds, as comparable (hashable, bitwise) values."""
    return (
        None
        if result.image is None
        else (result.image.shape, result.image.dtype.str, result.image.tobytes()),
        result.text,
        result.error,
        tuple(result.flags),
        None if result.hops is None else tuple(_key(h) for h in result.hops),
        None if result.frames is None else tuple(f.tobytes() for f in result.frames),
    )


def _keys(results: list[Result]) -> list[tuple]:
    return [_key(r) for r in results]


def _load(path: Path, **overrides) -> UniDiffuserEngine:
    return UniDiffuserEngine.from_pretrained(path, **{"steps": STEPS, **overrides})


def _assert_image(image: np.ndarray | None) -> None:
    assert isinstance(image, np.ndarray)
    assert image.shape == (RES, RES, 3)
    assert image.dtype == np.uint8
    assert image.std() > 1.0  # a real (random-model) image, not a constant fill


def _assert_caption(text: str | None) -> None:
    # a random decoder may emit end-of-text first: an empty caption is a valid output of the tiny model
    assert isinstance(text, str)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def engines(tiny_checkpoint: Path) -> dict[int, UniDiffuserEngine]:
    """Engines that differ only in batch size (short captions keep beam search cheap)."""
    return {bs: _load(tiny_checkpoint, batch_size=bs, caption_max_tokens=20) for bs in (1, 3, 4)}


# ------------------------------------------------------------------------------------------------------------
# output kinds per mode
# ------------------------------------------------------------------------------------------------------------
def test_t2i_returns_images(engine: UniDiffuserEngine):
    results = engine.t2i(PROMPTS[:2], seeds=[1, 2])
    assert len(results) == 2
    for r in results:
        assert r.ok and r.error is None
        _assert_image(r.image)
        assert r.text is None and r.hops is None and r.frames is None


def test_i2t_returns_captions(engine: UniDiffuserEngine):
    results = engine.i2t(IMAGES[:2], seeds=[1, 2])
    assert len(results) == 2
    for r in results:
        assert r.ok
        _assert_caption(r.text)
        assert r.image is None


def test_joint_returns_image_and_caption(engine: UniDiffuserEngine):
    results = engine.joint(seeds=[1, 2, 3])
    assert len(results) == 3
    for r in results:
        assert r.ok
        _assert_image(r.image)
        _assert_caption(r.text)


def test_image_mode_returns_images(engine: UniDiffuserEngine):
    results = engine.image(seeds=[1, 2])
    assert [r.text for r in results] == [None, None]
    for r in results:
        _assert_image(r.image)


def test_text_mode_returns_captions(engine: UniDiffuserEngine):
    results = engine.text(seeds=[1, 2])
    assert [r.image for r in results] == [None, None]
    for r in results:
        _assert_caption(r.text)


def test_i2t2i_returns_images(engine: UniDiffuserEngine):
    (r,) = engine.i2t2i([IMAGES[0]], seeds=[1])
    assert r.ok and r.text is None
    _assert_image(r.image)
    # an image variation, not a copy of the input
    assert not np.array_equal(r.image, IMAGES[0])


def test_t2i2t_returns_captions(engine: UniDiffuserEngine):
    (r,) = engine.t2i2t([PROMPTS[0]], seeds=[1])
    assert r.ok and r.image is None
    _assert_caption(r.text)


@pytest.mark.parametrize("hops", [1, 3, 4])
def test_chain_hops_alternate(engine: UniDiffuserEngine, hops: int):
    results = engine.chain([PROMPTS[0], IMAGES[0]], seeds=[1, 2], hops=hops)
    for result, first in zip(results, ("image", "text"), strict=True):
        assert result.ok
        assert result.hops is not None and len(result.hops) == hops
        kinds = []
        for hop in result.hops:
            assert (hop.image is None) != (hop.text is None)  # exactly one modality per hop
            if hop.image is not None:
                _assert_image(hop.image)
                kinds.append("image")
            else:
                _assert_caption(hop.text)
                kinds.append("text")
        other = "text" if first == "image" else "image"
        assert kinds == [first if i % 2 == 0 else other for i in range(hops)]
        # Result.image / Result.text are the last hop of each kind
        images = [h.image for h in result.hops if h.image is not None]
        texts = [h.text for h in result.hops if h.text is not None]
        if images:
            assert np.array_equal(result.image, images[-1])
        else:
            assert result.image is None
        assert result.text == (texts[-1] if texts else None)


def test_chain_uses_config_hops_by_default(tiny_checkpoint: Path):
    engine = _load(tiny_checkpoint, chain_hops=2, caption_max_tokens=10)
    (r,) = engine.chain([PROMPTS[0]], seeds=[1])
    assert len(r.hops) == 2
    assert r.hops[0].image is not None and r.hops[1].text is not None


def test_chain_first_hop_matches_single_mode(engine: UniDiffuserEngine):
    """From text, the first hop is exactly t2i; from an image, exactly i2t (same record noise stream)."""
    (from_text, from_image) = engine.chain([PROMPTS[0], IMAGES[0]], seeds=[5, 6], hops=2)
    assert np.array_equal(from_text.hops[0].image, engine.t2i([PROMPTS[0]], seeds=[5])[0].image)
    assert from_image.hops[0].text == engine.i2t([IMAGES[0]], seeds=[6])[0].text


def test_interpolate_frames_with_ends(engine: UniDiffuserEngine):
    a, b, c = _rng_image(10), _rng_image(11), _rng_image(12)
    ab, ac, cb = engine.interpolate([(a, b), (a, c), (c, b)], seeds=[4, 4, 4], frames=4)
    for r in (ab, ac, cb):
        assert r.ok
        assert r.frames is not None and len(r.frames) == 4
        for frame in r.frames:
            _assert_image(frame)
        assert np.array_equal(r.image, r.frames[-1])
    # the first frame is image a's end: it does not depend on b (up to slerp rounding), the last one does
    assert np.abs(ab.frames[0].astype(int) - ac.frames[0]).max() <= 2
    assert _diff(ab.frames[-1], ac.frames[-1]) > 2.0
    # the last frame is image b's end: it does not depend on a, the first one does
    assert np.abs(ab.frames[-1].astype(int) - cb.frames[-1]).max() <= 2
    assert _diff(ab.frames[0], cb.frames[0]) > 2.0
    # frames in between actually move
    assert not np.array_equal(ab.frames[1], ab.frames[0])
    assert not np.array_equal(ab.frames[1], ab.frames[-1])


def test_interpolate_uses_config_frames_by_default(tiny_checkpoint: Path):
    engine = _load(tiny_checkpoint, interpolation_frames=2)
    (r,) = engine.interpolate([(IMAGES[0], IMAGES[4])], seeds=[0])
    assert len(r.frames) == 2


def test_interpolate_rejects_non_pairs(engine: UniDiffuserEngine):
    results = engine.interpolate(
        [IMAGES[0], (IMAGES[0],), (IMAGES[0], IMAGES[4], IMAGES[0])], seeds=[0, 1, 2]
    )
    for r in results:
        assert not r.ok and "pair" in r.error


@pytest.mark.parametrize(
    "mode, inputs",
    [
        ("t2i", PROMPTS[:2]),
        ("i2t", IMAGES[:2]),
        ("joint", None),
        ("image", None),
        ("text", None),
        ("i2t2i", IMAGES[:2]),
        ("t2i2t", PROMPTS[:2]),
        ("chain", [PROMPTS[0], IMAGES[0]]),
        ("interpolate", [(IMAGES[0], IMAGES[4]), (IMAGES[4], IMAGES[0])]),
    ],
)
def test_run_dispatches_to_the_mode(engines: dict[int, UniDiffuserEngine], mode: str, inputs):
    engine = engines[4]
    seeds = [21, 22]
    direct = getattr(engine, mode)(seeds) if inputs is None else getattr(engine, mode)(inputs, seeds)
    assert _keys(engine.run(inputs, seeds, mode=mode)) == _keys(direct)
    assert _keys(engine.run(inputs, seeds, mode=Mode(mode))) == _keys(direct)


def test_run_uses_config_mode_and_validates(tiny_checkpoint: Path, engine: UniDiffuserEngine):
    assert engine.config.mode == Mode.T2I
    assert _keys(engine.run(PROMPTS[:1], [3])) == _keys(engine.t2i(PROMPTS[:1], [3]))
    image_engine = _load(tiny_checkpoint, mode="image")
    assert _keys(image_engine.run(None, [3])) == _keys(image_engine.image([3]))
    with pytest.raises(ValueError, match="needs inputs"):
        engine.run(None, [1], mode="i2t")
    with pytest.raises(ValueError):
        engine.run(PROMPTS[:1], [1], mode="nonsense")


def test_seeds_default_and_length_check(engine: UniDiffuserEngine):
    assert _keys(engine.t2i(PROMPTS[:3])) == _keys(engine.t2i(PROMPTS[:3], seeds=[0, 1, 2]))
    with pytest.raises(ValueError, match="seeds"):
        engine.t2i(PROMPTS[:3], seeds=[1, 2])


def test_empty_batch(engine: UniDiffuserEngine):
    assert engine.t2i([], seeds=[]) == []
    assert engine.joint(seeds=[]) == []


# ------------------------------------------------------------------------------------------------------------
# batch independence: alone == in a batch == reversed == any engine batch size (bitwise on CPU fp32)
# ------------------------------------------------------------------------------------------------------------
_ENCODE_IMAGES_BUG = (
    "Codecs.encode_images runs vae.encode and the CLIP image encoder on the whole batch; on CPU their "
    "convolutions give batch-size-dependent last bits (~1e-6), which reach the output image"
)


@pytest.mark.parametrize(
    "mode",
    [
        "t2i",
        "i2t",
        "joint",
        "image",
        "text",
        "i2t2i",
        "t2i2t",
    ],
)
def test_batch_independence(engines: dict[int, UniDiffuserEngine], mode: str):
    inputs = {"t2i": PROMPTS, "t2i2t": PROMPTS, "i2t": IMAGES, "i2t2i": IMAGES}.get(mode)

    def call(engine: UniDiffuserEngine, items: list | None, seeds: list[int]) -> list[tuple]:
        return _keys(getattr(engine, mode)(seeds) if items is None else getattr(engine, mode)(items, seeds))

    records = list(range(len(SEEDS)))

    def pick(idx: list[int]) -> list | None:
        return None if inputs is None else [inputs[i] for i in idx]

    alone = [call(engines[4], pick([i]), [SEEDS[i]])[0] for i in records]
    for result in alone:
        assert result[2] is None, result[2]  # no errors: the comparison must be about outputs
    assert call(engines[4], pick(records), SEEDS) == alone
    reverse = records[::-1]
    assert call(engines[4], pick(reverse), [SEEDS[i] for i in reverse])[::-1] == alone
    assert call(engines[1], pick(records), SEEDS) == alone
    assert call(engines[3], pick(records), SEEDS) == alone
    # a record next to different neighbours (and at another position) is still the same
    mixed = [4, 0, 2]
    assert call(engines[3], pick(mixed), [SEEDS[i] for i in mixed]) == [alone[i] for i in mixed]


def test_batch_independence_chain_and_interpolate(engines: dict[int, UniDiffuserEngine]):
    """Chains mixing text and image starts and interpolations: each record the same alone and batched."""
    chain_inputs = [PROMPTS[0], PROMPTS[2], PROMPTS[3]]  # text starts: no image encoding involved
    seeds = [1, 2, 3]
    alone = [_key(engines[4].chain([x], [s], hops=3)[0]) for x, s in zip(chain_inputs, seeds, strict=True)]
    assert _keys(engines[4].chain(chain_inputs, seeds, hops=3)) == alone
    assert _keys(engines[1].chain(chain_inputs, seeds, hops=3)) == alone
    # an image start in the batch does not change the text-start records
    mixed = engines[3].chain([chain_inputs[0], IMAGES[0], chain_inputs[1]], [1, 9, 2], hops=3)
    assert [_key(mixed[0]), _key(mixed[2])] == alone[:2]


def test_same_seed_for_two_records_gives_same_output(engine: UniDiffuserEngine):
    """Records never share a generator: the same (input, seed) twice in a batch is the same output twice."""
    a, b = engine.t2i([PROMPTS[0], PROMPTS[0]], seeds=[5, 5])
    assert np.array_equal(a.image, b.image)
    c, d = engine.joint(seeds=[8, 8])
    assert _key(c) == _key(d)


def test_a_prompt_repeated_in_a_batch_is_encoded_once(engine: UniDiffuserEngine):
    """Samples of one prompt share its text latent: one text-encoder row per distinct prompt."""
    long_prompt = " ".join(["red"] * 100)
    rows_seen: list[int] = []
    encoder = engine.codecs.c.text_encoder
    hook = encoder.register_forward_hook(lambda module, args, output: rows_seen.append(args[0].shape[0]))
    try:
        latents, cut = engine.codecs.encode_prompts([PROMPTS[0], long_prompt, PROMPTS[0], PROMPTS[0]])
    finally:
        hook.remove()
    assert rows_seen == [2]
    assert cut == [False, True, False, False]
    alone, _ = engine.codecs.encode_prompts([long_prompt])
    assert torch.equal(latents[1], alone[0])
    assert torch.equal(latents[0], latents[2]) and torch.equal(latents[0], latents[3])


# ------------------------------------------------------------------------------------------------------------
# determinism and seeds
# ------------------------------------------------------------------------------------------------------------
def test_deterministic_across_engines(tiny_checkpoint: Path, engine: UniDiffuserEngine):
    other = _load(tiny_checkpoint, batch_size=4)
    assert _keys(other.t2i(PROMPTS[:3], [1, 2, 3])) == _keys(engine.t2i(PROMPTS[:3], [1, 2, 3]))
    assert _keys(other.joint([4, 5])) == _keys(engine.joint([4, 5]))
    assert _keys(other.i2t2i(IMAGES[:1], [6])) == _keys(engine.i2t2i(IMAGES[:1], [6]))
    assert _keys(other.i2t(IMAGES[:1], [6])) == _keys(engine.i2t(IMAGES[:1], [6]))
    # and across repeated calls on one engine
    assert _keys(engine.t2i(PROMPTS[:1], [9])) == _keys(engine.t2i(PROMPTS[:1], [9]))


def test_seed_changes_the_output(engine: UniDiffuserEngine):
    a, b = engine.t2i([PROMPTS[0], PROMPTS[0]], seeds=[1, 2])
    assert _diff(a.image, b.image) > 5.0
    c, d = engine.image(seeds=[1, 2])
    assert _diff(c.image, d.image) > 5.0
    e, f = engine.i2t2i([IMAGES[0], IMAGES[0]], seeds=[1, 2])
    assert _diff(e.image, f.image) > 5.0


def test_prompt_changes_the_output(engine: UniDiffuserEngine):
    a, b = engine.t2i([PROMPTS[0], PROMPTS[2]], seeds=[1, 1])
    assert _diff(a.image, b.image) > 1.0


# ------------------------------------------------------------------------------------------------------------
# sampling options
# ------------------------------------------------------------------------------------------------------------
def test_guidance_at_most_one_disables_cfg(tiny_checkpoint: Path, engine: UniDiffuserEngine):
    guided = engine.t2i(PROMPTS[:2], [1, 2])
    one = _load(tiny_checkpoint, guidance_scale=1.0)
    half = _load(tiny_checkpoint, guidance_scale=0.5)
    zero = _load(tiny_checkpoint, guidance_scale=0.0)
    assert not one.config.cfg_enabled and engine.config.cfg_enabled
    plain = one.t2i(PROMPTS[:2], [1, 2])
    for g, p in zip(guided, plain, strict=True):
        assert _diff(g.image, p.image) > 2.0
    # both <= 1: no guidance at all, so the scale itself plays no part
    assert _keys(half.t2i(PROMPTS[:2], [1, 2])) == _keys(plain)
    assert _keys(zero.t2i(PROMPTS[:2], [1, 2])) == _keys(plain)
    assert _keys(half.joint([3])) == _keys(one.joint([3]))
    assert _diff(one.joint([3])[0].image, engine.joint([3])[0].image) > 2.0


def test_guidance_scale_matters_above_one(tiny_checkpoint: Path, engine: UniDiffuserEngine):
    three = _load(tiny_checkpoint, guidance_scale=3.0)
    assert _diff(three.t2i(PROMPTS[:1], [1])[0].image, engine.t2i(PROMPTS[:1], [1])[0].image) > 1.0


def test_t2i_cfg_mode_empty_token_differs(tiny_checkpoint: Path, engine: UniDiffuserEngine):
    empty = _load(tiny_checkpoint, t2i_cfg_mode="empty_token")
    assert engine.config.t2i_cfg_mode == "true_uncond"
    a = empty.t2i(PROMPTS[:2], [1, 2])
    b = engine.t2i(PROMPTS[:2], [1, 2])
    for x, y in zip(a, b, strict=True):
        _assert_image(x.image)
        assert _diff(x.image, y.image) > 2.0
    # empty-token CFG is also batch independent and deterministic
    assert _keys(a) == [_key(empty.t2i([p], [s])[0]) for p, s in zip(PROMPTS[:2], [1, 2], strict=True)]
    # without guidance the CFG mode plays no part
    one_a = _load(tiny_checkpoint, guidance_scale=1.0, t2i_cfg_mode="empty_token").t2i(PROMPTS[:1], [1])
    one_b = _load(tiny_checkpoint, guidance_scale=1.0).t2i(PROMPTS[:1], [1])
    assert _keys(one_a) == _keys(one_b)


def test_data_type_matters_on_v1(tiny_checkpoint: Path, engine: UniDiffuserEngine):
    assert engine.config.data_type == 1
    zero = _load(tiny_checkpoint, data_type=0)
    a, b = zero.t2i(PROMPTS[:1], [1])[0], engine.t2i(PROMPTS[:1], [1])[0]
    _assert_image(a.image)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(zero.image([2])[0].image, engine.image([2])[0].image)


def test_v0_checkpoint_works(tiny_checkpoint_v0: Path):
    engine = _load(tiny_checkpoint_v0, caption_max_tokens=20)
    assert not engine.components.uvit.config.use_data_type_embedding
    (t2i,) = engine.t2i(PROMPTS[:1], [1])
    _assert_image(t2i.image)
    (i2t,) = engine.i2t(IMAGES[:1], [1])
    _assert_caption(i2t.text)
    (joint,) = engine.joint([1])
    _assert_image(joint.image)
    _assert_caption(joint.text)
    # v0 has no data-type token: the option is ignored
    other = _load(tiny_checkpoint_v0, data_type=0, caption_max_tokens=20)
    assert _keys(other.t2i(PROMPTS[:1], [1])) == _keys([t2i])


def test_bfloat16_on_cpu(tiny_checkpoint: Path, engine: UniDiffuserEngine):
    bf16 = _load(tiny_checkpoint, dtype="bfloat16", caption_max_tokens=20)
    assert bf16.config.torch_dtype == torch.bfloat16
    assert next(bf16.components.uvit.parameters()).dtype == torch.bfloat16
    low = bf16.t2i(PROMPTS[:2], [1, 2])
    full = engine.t2i(PROMPTS[:2], [1, 2])
    other_seed = engine.t2i(PROMPTS[:2], [101, 102])
    for lo, fp, os_ in zip(low, full, other_seed, strict=True):
        assert lo.ok
        _assert_image(lo.image)
        # close to float32: much closer than another seed is
        assert _diff(lo.image, fp.image) < 0.25 * _diff(os_.image, fp.image)
    (joint,) = bf16.joint([3])
    _assert_image(joint.image)
    _assert_caption(joint.text)
    (caption,) = bf16.i2t(IMAGES[:1], [1])
    _assert_caption(caption.text)


# ------------------------------------------------------------------------------------------------------------
# config and checkpoint errors at construction
# ------------------------------------------------------------------------------------------------------------
def _config_error(path, **overrides) -> str:
    with pytest.raises(EngineConfigError) as info:
        UniDiffuserEngine.from_pretrained(path, **overrides)
    message = str(info.value)
    assert message.startswith("invalid engine config:")
    assert "\n" not in message.strip()  # one clear message, no traceback dump
    return message


def test_config_error_unknown_mode(tiny_checkpoint: Path):
    message = _config_error(tiny_checkpoint, mode="t2v")
    assert "mode" in message and "t2i" in message  # names the key and what is allowed


def test_config_error_steps(tiny_checkpoint: Path):
    assert "steps" in _config_error(tiny_checkpoint, steps=0)
    assert "steps" in _config_error(tiny_checkpoint, steps=-3)


def test_config_error_resolution_mismatch(tiny_checkpoint: Path):
    message = _config_error(tiny_checkpoint, resolution=512)
    assert "resolution 512" in message and "64" in message
    # the checkpoint's own resolution is accepted
    assert _load(tiny_checkpoint, resolution=64).resolution == 64


def test_config_error_unknown_key(tiny_checkpoint: Path):
    message = _config_error(tiny_checkpoint, num_steps=4)
    assert "num_steps" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_config_error_cuda_without_gpu(tiny_checkpoint: Path):
    assert "CUDA is not available" in _config_error(tiny_checkpoint, device="cuda")
    assert "CUDA is not available" in _config_error(tiny_checkpoint, device="cuda:1")
    # 'auto' falls back to the CPU
    assert _load(tiny_checkpoint, device="auto").device.type == "cpu"


def test_config_error_caption_length(tiny_checkpoint: Path):
    # the tiny caption decoder has 160 positions: 77 prefix + 100 tokens do not fit
    assert "caption_max_tokens" in _config_error(tiny_checkpoint, caption_max_tokens=100)


def test_config_errors_reported_together(tiny_checkpoint: Path):
    message = _config_error(
        tiny_checkpoint, mode="t2v", steps=0, num_steps=4, guidance_scale=-1, dtype="int8"
    )
    for key in ("mode", "steps", "num_steps", "guidance_scale", "dtype"):
        assert key in message, key
    assert message.count(";") >= 4
    # the checkpoint-dependent checks are reported together too
    problems = {"resolution": 512, "caption_max_tokens": 100}
    if not torch.cuda.is_available():
        problems["device"] = "cuda"
    message = _config_error(tiny_checkpoint, **problems)
    assert "resolution 512" in message and "caption_max_tokens" in message
    if "device" in problems:
        assert "CUDA" in message


def test_config_field_and_checkpoint_errors_reported_together(tiny_checkpoint: Path):
    message = _config_error(tiny_checkpoint, steps=0, resolution=512)
    assert "steps" in message and "resolution 512" in message


def test_config_build_directly():
    with pytest.raises(EngineConfigError) as info:
        EngineConfig.build(steps=0, batch_size=0, interpolation_frames=1)
    for key in ("steps", "batch_size", "interpolation_frames"):
        assert key in str(info.value)
    cfg = EngineConfig.build(steps=3, mode="i2t")
    assert cfg.steps == 3 and cfg.mode is Mode.I2T


def test_config_checked_before_touching_the_checkpoint(tmp_path: Path):
    """A bad config fails fast, even when the checkpoint location does not exist."""
    with pytest.raises(EngineConfigError, match="steps"):
        UniDiffuserEngine.from_pretrained(tmp_path / "missing", steps=0)


def test_config_object_with_overrides(tiny_checkpoint: Path):
    base = EngineConfig(steps=2, batch_size=2, guidance_scale=1.0)
    engine = UniDiffuserEngine.from_pretrained(tiny_checkpoint, base, steps=3)
    assert engine.config.steps == 3 and engine.config.batch_size == 2 and engine.config.guidance_scale == 1.0
    assert UniDiffuserEngine.from_pretrained(tiny_checkpoint, base).config == base


@pytest.fixture()
def checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


@pytest.mark.parametrize("component", ["vae", "unet", "text_decoder", "clip_tokenizer", "scheduler"])
def test_missing_component_folder(checkpoint_copy: Path, component: str):
    shutil.rmtree(checkpoint_copy / component)
    with pytest.raises(CheckpointError) as info:
        _load(checkpoint_copy)
    assert str(checkpoint_copy / component) in str(info.value)
    assert component in str(info.value)


def test_missing_weights_and_config_files(checkpoint_copy: Path):
    (checkpoint_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in .*unet"):
        _load(checkpoint_copy)


def test_missing_config_file(checkpoint_copy: Path):
    (checkpoint_copy / "text_decoder" / "config.json").unlink()
    with pytest.raises(CheckpointError) as info:
        _load(checkpoint_copy)
    assert str(checkpoint_copy / "text_decoder" / "config.json") in str(info.value)


def test_missing_checkpoint_folder(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        _load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"pre_layer_norm": True}, "pre_layer_norm"),
        ({"block_type": "ubvit"}, "block_type"),
        ({"use_patch_pos_embed": True}, "use_patch_pos_embed"),
        ({"activation_fn": "relu"}, "activation_fn"),
        ({"num_layers": -2}, "num_layers"),
    ],
)
def test_unsupported_unet_config(checkpoint_copy: Path, change: dict, expected: str):
    config_path = checkpoint_copy / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(change)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported U-ViT config") as info:
        _load(checkpoint_copy)
    assert expected in str(info.value)


def test_even_num_layers_as_published(tiny_checkpoint: Path, checkpoint_copy: Path):
    """thu-ml's published config says num_layers 30 (its depth) for 15 + 1 + 15 blocks: an even value names the
    same network as the next odd one, as in diffusers."""
    config_path = checkpoint_copy / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["num_layers"] == 3
    config_path.write_text(json.dumps({**config, "num_layers": 2}))
    even, odd = _load(checkpoint_copy), _load(tiny_checkpoint)
    assert even.components.uvit.config.num_blocks == odd.components.uvit.config.num_blocks == 3
    assert _keys(even.t2i(PROMPTS[:2], [1, 2])) == _keys(odd.t2i(PROMPTS[:2], [1, 2]))


# ------------------------------------------------------------------------------------------------------------
# per-record errors never spoil the batch
# ------------------------------------------------------------------------------------------------------------
def test_bad_prompts_do_not_spoil_the_batch(engine: UniDiffuserEngine):
    prompts = [PROMPTS[0], "", PROMPTS[2], 42, "   ", PROMPTS[3], None, PROMPTS[4]]
    seeds = [1, 2, 3, 4, 5, 6, 7, 8]
    results = engine.t2i(prompts, seeds)
    assert len(results) == len(prompts)
    bad = {1: "empty prompt", 3: "must be a string", 4: "empty prompt", 6: "must be a string"}
    for i, r in enumerate(results):
        if i in bad:
            assert not r.ok and bad[i] in r.error
            assert r.image is None and r.text is None
        else:
            assert r.ok
            assert _key(r) == _key(engine.t2i([prompts[i]], [seeds[i]])[0])


def test_bad_images_do_not_spoil_the_batch(engine: UniDiffuserEngine):
    images = [IMAGES[0], b"not an image", IMAGES[3], None, np.zeros((4, 4, 3), np.uint8), IMAGES[1], b""]
    seeds = [1, 2, 3, 4, 5, 6, 7]
    good = [0, 2, 5]
    bad = {1: "undecodable", 3: "image must be", 4: "too small", 6: "empty"}
    for mode in ("i2t2i", "i2t"):
        results = getattr(engine, mode)(images, seeds)
        for i, r in bad.items():
            assert not results[i].ok and r in results[i].error, (mode, i, results[i].error)
            assert results[i].image is None and results[i].text is None
        # the good records are exactly what a batch of only the good records gives
        only_good = getattr(engine, mode)([images[i] for i in good], [seeds[i] for i in good])
        assert [_key(results[i]) for i in good] == _keys(only_good), mode
        assert all(r.ok for r in only_good)
    # and (captions) what each gives alone; images alone: see test_batch_independence[i2t2i]
    results = engine.i2t(images, seeds)
    for i in good:
        assert _key(results[i]) == _key(engine.i2t([images[i]], [seeds[i]])[0]), i


def test_bad_records_in_chain_and_interpolate(engine: UniDiffuserEngine):
    chain = engine.chain([PROMPTS[0], "", b"junk", PROMPTS[2]], seeds=[1, 2, 3, 4], hops=2)
    assert [r.ok for r in chain] == [True, False, False, True]
    assert "empty prompt" in chain[1].error and "undecodable" in chain[2].error
    assert _key(chain[3]) == _key(engine.chain([PROMPTS[2]], [4], hops=2)[0])
    interp = engine.interpolate([(IMAGES[0], b"junk"), (IMAGES[0], IMAGES[4])], seeds=[1, 2], frames=2)
    assert not interp[0].ok and "undecodable" in interp[0].error
    assert _key(interp[1]) == _key(engine.interpolate([(IMAGES[0], IMAGES[4])], [2], frames=2)[0])


def test_engine_failure_is_isolated_to_its_record(engine: UniDiffuserEngine, monkeypatch: pytest.MonkeyPatch):
    """A record that makes the model itself fail is retried alone and reported; the others are unaffected."""
    expected = {p: _key(engine.t2i([p], [s])[0]) for p, s in zip(PROMPTS[:3], [1, 2, 3], strict=True)}
    original = engine.codecs.encode_prompts

    def flaky(prompts):
        if "POISON" in prompts:
            raise RuntimeError("simulated kernel failure")
        return original(prompts)

    monkeypatch.setattr(engine.codecs, "encode_prompts", flaky)
    results = engine.t2i([PROMPTS[0], "POISON", PROMPTS[1], PROMPTS[2]], seeds=[1, 9, 2, 3])
    assert not results[1].ok
    assert "engine error" in results[1].error and "simulated kernel failure" in results[1].error
    assert [_key(results[i]) for i in (0, 2, 3)] == [expected[p] for p in PROMPTS[:3]]


# ------------------------------------------------------------------------------------------------------------
# per-call arguments
# ------------------------------------------------------------------------------------------------------------
def test_chain_checks_seed_count(engine: UniDiffuserEngine):
    with pytest.raises(ValueError, match="seeds"):
        engine.chain([PROMPTS[0], PROMPTS[1]], seeds=[1], hops=1)


@pytest.mark.parametrize("frames", [1, -2])
def test_interpolate_rejects_too_few_frames(engine: UniDiffuserEngine, frames: int):
    with pytest.raises(ValueError, match="frames"):
        engine.interpolate([(IMAGES[0], IMAGES[4])], seeds=[1], frames=frames)


def test_chain_rejects_negative_hops(engine: UniDiffuserEngine):
    with pytest.raises(ValueError, match="hops"):
        engine.chain([PROMPTS[0]], seeds=[1], hops=-1)
