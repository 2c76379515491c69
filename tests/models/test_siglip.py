"""SigLIP wrapper: a save_pretrained model loads through the real path and encodes video and images."""

import numpy as np
import pytest
import torch
from transformers import SiglipVisionModel

from pipeline.errors import WeightsError
from pipeline.models.siglip import SiglipEncoder


def _video(t=5, h=72, w=96):
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_encodes_a_video_chunk_and_a_single_image(tiny_siglip):
    enc = SiglipEncoder(str(tiny_siglip), device="cpu", dtype="fp32", batch_size=2)
    assert (enc.image_size, enc.grid, enc.hidden_size) == (56, 4, 32)
    video = _video()
    tokens = enc.encode(video)
    assert tokens.shape == (5, 4, 4, 32) and tokens.dtype == torch.float32
    image = enc.encode(video[2].numpy())  # (H, W, 3) numpy image
    assert image.shape == (1, 4, 4, 32)
    # batching does not change results: the single image equals its frame in the chunk
    torch.testing.assert_close(image[0], tokens[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("select_layer", [-1, -2])
def test_matches_transformers_hidden_states(tiny_siglip, select_layer):
    enc = SiglipEncoder(str(tiny_siglip), device="cpu", dtype="fp32", select_layer=select_layer)
    frames = _video(t=2, h=56, w=56)
    reference = SiglipVisionModel.from_pretrained(str(tiny_siglip)).eval()
    pixels = (frames.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        out = reference(pixel_values=pixels, output_hidden_states=True)
    expected = out.last_hidden_state if select_layer == -1 else out.hidden_states[select_layer]
    torch.testing.assert_close(enc.encode(frames), expected.reshape(2, 4, 4, 32), rtol=1e-4, atol=1e-4)


def test_bf16_runs_and_stays_close(tiny_siglip):
    frames = _video(t=2)
    fp32 = SiglipEncoder(str(tiny_siglip), device="cpu", dtype="fp32").encode(frames)
    bf16 = SiglipEncoder(str(tiny_siglip), device="cpu", dtype="bf16").encode(frames)
    assert bf16.dtype == torch.float32  # handed on as fp32 whatever the compute dtype
    assert (fp32 - bf16).abs().mean() < 0.1


def test_missing_weights_is_one_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="cannot load SigLIP weights from"):
        SiglipEncoder(str(tmp_path / "nowhere"), device="cpu")


def test_rejects_frames_of_the_wrong_shape(tiny_siglip):
    enc = SiglipEncoder(str(tiny_siglip), device="cpu", dtype="fp32")
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        enc.encode(np.zeros((2, 8, 8, 4), dtype=np.uint8))
