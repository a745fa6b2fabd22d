"""A tiny, randomly initialised Stable Diffusion pipeline written to a folder, for tests of the
generation stage without any download: a few-channel UNet, a one-block VAE (so images are the
latent size), a one-layer CLIP text encoder and a character-level CLIP tokenizer."""
from __future__ import annotations

import json
import os
import string


def write_tokenizer(folder: str) -> None:
    """A CLIP BPE tokenizer with no merges: every word becomes its characters (the last one with
    CLIP's ``</w>`` suffix), enough to encode any lower-case prompt."""
    os.makedirs(folder, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + "-_'.,"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")


def build_tiny_pipeline(folder: str, image_size: int = 16, seed: int = 0) -> str:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=image_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, sample_size=image_size)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=1, vocab_size=100, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    write_tokenizer(os.path.join(folder, "_tok"))
    tokenizer = CLIPTokenizer(os.path.join(folder, "_tok", "vocab.json"), os.path.join(folder, "_tok", "merges.txt"),
                              model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


if __name__ == "__main__":  # python -m tests.tiny_diffusion FOLDER: the pipeline of dapt_synthetic_digits.yaml
    import sys

    print(build_tiny_pipeline(sys.argv[1] if len(sys.argv) > 1 else "/tmp/w2s-tiny-sd"))
