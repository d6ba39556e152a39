"""modules/shared.py: opts, state and the loaded model, as far as the glue reads them."""

from __future__ import annotations

from typing import Any


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section


class Options:
    def __init__(self) -> None:
        object.__setattr__(self, "data", {"skip_early_cond": 0.0, "s_min_uncond_all": False,
                                          "live_preview_content": "Prompt"})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def __getattr__(self, item: str) -> Any:
        if item in self.data:
            return self.data[item]
        raise AttributeError(item)


class State:
    interrupted = False
    skipped = False
    textinfo = None
    job = ""
    job_count = 0
    sampling_step = 0
    sampling_steps = 0

    def begin(self, job: str = "(unknown)") -> None:
        self.interrupted = False
        self.skipped = False
        self.sampling_step = 0
        self.job_count = -1
        self.textinfo = None
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def interrupt(self) -> None:
        self.interrupted = True


class CmdOpts:
    """The command-line flags the glue reads (``--api-auth``, ``--gradio-auth(-path)``, ``--nowebui``, and the
    extension's own ``--safe-denoiser-operators`` that its ``preload.py`` adds to the WebUI's parser)."""

    api_auth: str | None = None
    safe_denoiser_operators: str | None = None
    gradio_auth: str | None = None
    gradio_auth_path: str | None = None
    nowebui = False


opts = Options()
cmd_opts = CmdOpts()
state = State()
sd_model: Any = None
