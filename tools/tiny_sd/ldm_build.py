"""Build the WebUI's own v1 LatentDiffusion from the yaml, with the ldm classes of a WebUI install.

Using the classes the WebUI will load the checkpoint into makes the state-dict keys (``first_stage_model.*``,
``model.diffusion_model.*``, ``cond_stage_model.transformer.*``) right by construction. Nothing is downloaded:
the CLIP text model is built from the config in the offline HF cache (``HF_HOME``), with random weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def import_ldm(webui: Path) -> None:
    """Put the WebUI's stable-diffusion repository (``repositories/stable-diffusion-stability-ai``) on sys.path."""
    repo = webui / "repositories" / "stable-diffusion-stability-ai"
    if not (repo / "ldm").is_dir():
        raise SystemExit(f"{webui} is not a WebUI install: {repo}/ldm is missing")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))


def model_yaml(template: Path, prediction: str) -> str:
    """The checkpoint's yaml: the template, with ldm's ``parameterization: "v"`` for a v-prediction model (the
    WebUI then wraps it in its v denoisers, as it does SD 2.x v models)."""
    text = template.read_text()
    if prediction == "eps":
        return text
    if prediction != "v":
        raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")
    head, sep, tail = text.partition("\n  params:\n")
    if not sep:
        raise ValueError(f"{template} has no model params block")
    head = head.replace("eps-prediction", "v-prediction").replace(
        "as an ordinary SD 1.x model", "as a v-prediction SD 1.x model")
    return head + sep + '    parameterization: "v"\n' + tail


def build_model(webui: Path, yaml_text: str, seed: int) -> torch.nn.Module:
    """The LatentDiffusion of the yaml ``yaml_text`` with seeded random weights (the text encoder keeps them)."""
    import_ldm(webui)
    import ldm.modules.encoders.modules as encoders
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig, CLIPTextModel

    encoders.CLIPTextModel.from_pretrained = classmethod(
        lambda cls, name, *a, **k: CLIPTextModel(CLIPTextConfig.from_pretrained(name)))
    torch.manual_seed(seed)
    model = instantiate_from_config(OmegaConf.create(yaml_text).model)
    return model.float().eval()


def prompt_tokens(model: torch.nn.Module, prompt: str, length: int) -> torch.Tensor:
    """Token ids exactly as the WebUI's SD 1.x prompt encoder builds them: BOS, the prompt, EOS padding."""
    tokenizer = model.cond_stage_model.tokenizer
    ids = tokenizer(prompt, truncation=False, add_special_tokens=False)["input_ids"]
    if len(ids) > length - 2:
        raise ValueError(f"prompt {prompt!r} has {len(ids)} tokens; at most {length - 2} fit")
    return torch.tensor([tokenizer.bos_token_id, *ids] + [tokenizer.eos_token_id] * (length - 1 - len(ids)))


@torch.no_grad()
def encode_prompts(model: torch.nn.Module, prompts: list[str], length: int) -> torch.Tensor:
    """[P, length, C] conditionings: the text model's last hidden state (the WebUI's CLIP skip 1)."""
    tokens = torch.stack([prompt_tokens(model, p, length) for p in prompts])
    return model.cond_stage_model.transformer(input_ids=tokens).last_hidden_state
