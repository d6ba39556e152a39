"""Train the tiny digits checkpoint: a KL autoencoder, then a text-conditioned UNet, both in ldm's v1 layout.

    HF_HOME=/path/to/hf-cache python -m tools.tiny_sd.train --webui /path/to/stable-diffusion-webui

runs with the WebUI's Python (its venv has ldm's requirements) and writes ``tiny-digits-sd15.safetensors`` and
its yaml to ``~/.cache/sd-webui-safe-denoiser/`` (``--out`` elsewhere); copy both into the WebUI's
``models/Stable-diffusion/``. Fixed seeds, data order and thread count, so reruns are meant to agree. The text
encoder keeps its seeded random weights: different prompts still give different conditionings, and the UNet
learns what they mean. Training uses the demo's train split only, so its held-out digits stay unseen.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from lib_safe_denoiser.banks.files import atomic_write_bytes
from lib_safe_denoiser.demo.data import load_split
from tools.tiny_sd import config as C
from tools.tiny_sd.digits64 import DigitReader, upscale
from tools.tiny_sd.ldm_build import build_model, encode_prompts, model_yaml

EMA_DECAY = 0.995
WARMUP_STEPS = 50
VAE_CHECK = 256
"""Held-out digits sent through the VAE to check it keeps them readable."""


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)))


def train_vae(vae: torch.nn.Module, images: torch.Tensor, steps: int, gen: torch.Generator) -> float:
    """Reconstruction (L1 + L2) with a small KL term; returns the last LOG_EVERY steps' mean reconstruction MSE."""
    params = [p.requires_grad_(True) for n, p in vae.named_parameters() if not n.startswith("loss.")]
    opt = torch.optim.Adam(params, lr=C.VAE_LR)
    recent: list[float] = []
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, C.VAE_LR)
        x = images[torch.randint(len(images), (C.VAE_BATCH,), generator=gen)]
        posterior = vae.encode(x)
        rec = vae.decode(posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen))
        mse = F.mse_loss(rec, x)
        loss = mse + F.l1_loss(rec, x) + C.VAE_KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [mse.item()])[-C.LOG_EVERY:]
        if (step + 1) % C.LOG_EVERY == 0:
            print(f"vae  step {step + 1:5d}/{steps}  mse {sum(recent) / len(recent):.5f}  {time.time() - start:6.0f}s",
                  flush=True)
    vae.requires_grad_(False)
    return sum(recent) / len(recent)


@torch.no_grad()
def normalise_latents(vae: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold per-channel latent mean and std into the 1x1 quant convs, so ``LATENT_SCALE * z`` has zero mean and
    unit std (SD's fixed scale factor then fits this VAE). The decoder sees exactly what it saw before."""
    mean = torch.cat([vae.encode(part).mean for part in images.split(128)])
    m, s = mean.mean(dim=(0, 2, 3)), mean.std(dim=(0, 2, 3))
    k = s * C.LATENT_SCALE  # z_new = (z - m) / k
    ch = m.numel()
    q, pq = vae.quant_conv, vae.post_quant_conv
    q.weight[:ch] /= k.view(-1, 1, 1, 1)
    q.bias[:ch] = (q.bias[:ch] - m) / k
    q.bias[ch:] -= 2.0 * k.log()  # the log-variance scales with k^2
    pq.bias += pq.weight[:, :, 0, 0] @ m
    pq.weight *= k.view(1, -1, 1, 1)
    return m, s


class Ema:
    """Exponential moving average of a module's parameters (what gets saved: it samples better)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), module.parameters(), strict=True):
            s.lerp_(p, 1.0 - EMA_DECAY)


def train_unet(model: torch.nn.Module, latents: torch.Tensor, labels: torch.Tensor, contexts: torch.Tensor,
               steps: int, gen: torch.Generator) -> tuple[torch.nn.Module, float]:
    """eps- or v-prediction (``model.parameterization``) on the model's own DDPM schedule; contexts[0..9] digit
    prompts, [10] generic, [11] empty. v = sqrt(a) eps - sqrt(1 - a) x0, ldm's own definition."""
    unet = model.model.diffusion_model
    ema = Ema(unet)
    opt = torch.optim.AdamW(unet.requires_grad_(True).parameters(), lr=C.UNET_LR, weight_decay=0.0)
    sqrt_a, sqrt_1ma = model.sqrt_alphas_cumprod.float(), model.sqrt_one_minus_alphas_cumprod.float()
    recent: list[float] = []
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, C.UNET_LR)
        idx = torch.randint(len(latents), (C.UNET_BATCH,), generator=gen)
        x0, y = latents[idx], labels[idx].clone()
        u = torch.rand(C.UNET_BATCH, generator=gen)
        y[u < C.P_GENERIC + C.P_EMPTY] = 10
        y[u < C.P_EMPTY] = 11
        t = torch.randint(model.num_timesteps, (C.UNET_BATCH,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = sqrt_a[t].view(-1, 1, 1, 1) * x0 + sqrt_1ma[t].view(-1, 1, 1, 1) * eps
        a, b = sqrt_a[t].view(-1, 1, 1, 1), sqrt_1ma[t].view(-1, 1, 1, 1)
        target = a * eps - b * x0 if model.parameterization == "v" else eps
        loss = F.mse_loss(unet(x_t, t, context=contexts[y]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(unet)
        recent = (recent + [loss.item()])[-C.LOG_EVERY:]
        if (step + 1) % C.LOG_EVERY == 0:
            print(f"unet step {step + 1:5d}/{steps}  loss {sum(recent) / len(recent):.4f}  {time.time() - start:6.0f}s",
                  flush=True)
    return ema.shadow, sum(recent) / len(recent)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--webui", type=Path, required=True, help="a WebUI v1.10.x install (its repositories/ folder)")
    ap.add_argument("--prediction", choices=sorted(C.PREDICTIONS), default="eps",
                    help="what the UNet predicts: eps (SD 1.x) or v (as SD 2.x v models; its yaml says so)")
    ap.add_argument("--out", type=Path, help="the .safetensors to write (the .yaml goes beside); default: "
                    f"{C.CACHE_DIR}/{C.CHECKPOINT_NAME}, or {C.V_CHECKPOINT_NAME} for v")
    ap.add_argument("--vae-steps", type=int, default=C.VAE_STEPS)
    ap.add_argument("--unet-steps", type=int, default=C.UNET_STEPS)
    args = ap.parse_args(argv)
    out: Path = args.out or C.CACHE_DIR / C.PREDICTIONS[args.prediction]
    yaml_text = model_yaml(C.YAML_TEMPLATE, args.prediction)

    torch.set_num_threads(C.THREADS)
    torch.manual_seed(C.SEED)
    gen = torch.Generator().manual_seed(C.SEED)
    began = time.time()
    model = build_model(args.webui, yaml_text, C.SEED)
    train, heldout = load_split()
    images = upscale(train.images)
    vae = model.first_stage_model
    vae_mse = train_vae(vae, images, args.vae_steps, gen)
    m, s = normalise_latents(vae, images)
    with torch.no_grad():
        latents = torch.cat([vae.encode(p).mean for p in images.split(128)]) * C.LATENT_SCALE
        check = heldout.images[:VAE_CHECK]
        rec = model.decode_first_stage(model.get_first_stage_encoding(vae.encode(upscale(check))))
    reader = DigitReader()
    vae_acc = float((reader.read(rec) == heldout.labels[:VAE_CHECK]).float().mean())
    print(f"vae: latent std {float(latents.std()):.3f}, mean {float(latents.mean()):+.3f}; "
          f"held-out digits read right after the VAE round trip {vae_acc:.3f}", flush=True)

    prompts = [C.DIGIT_PROMPT.format(digit=d) for d in range(10)] + [C.GENERIC_PROMPT, C.EMPTY_PROMPT]
    contexts = encode_prompts(model, prompts, C.CONTEXT_TOKENS)
    ema_unet, unet_loss = train_unet(model, latents, train.labels, contexts, args.unet_steps, gen)
    model.model.diffusion_model.load_state_dict(ema_unet.state_dict())

    summary = {"prediction": args.prediction, "vae_steps": args.vae_steps, "unet_steps": args.unet_steps,
               "vae_mse": round(vae_mse, 6),
               "unet_loss": round(unet_loss, 5), "latent_channel_mean": [round(float(v), 4) for v in m],
               "latent_channel_std": [round(float(v), 4) for v in s], "vae_heldout_accuracy": round(vae_acc, 4),
               "heldout_reader_accuracy": round(reader.accuracy(heldout), 4),
               "train_seconds": round(time.time() - began, 1)}
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save(state, metadata={"tiny_sd": json.dumps(summary)}))
    atomic_write_bytes(out.with_suffix(".yaml"), yaml_text.encode())
    print(json.dumps(summary))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.yaml').name}")


if __name__ == "__main__":
    main()
