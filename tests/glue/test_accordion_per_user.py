"""What the accordion offers each user under auth. The page is built once, for everyone, so it lists
only the shared banks; its refresh and focus events and its diagnostics panel answer for the user
of the event (gradio's ``request.username``), never for whoever built the page."""

from __future__ import annotations

import gradio as gr
import pytest
from modules import shared

from lib_safe_denoiser.generation.infotext import KEY_ERROR
from tests.glue import harness
from tests.glue.test_accordion import build
from tests.glue.test_private_banks import with_users  # noqa: F401  (fixture: auth on, alice's private bank)

PRIVATE = "alice-private"
"""alice's own bank (the ``with_users`` fixture); bob may neither see nor use it."""
SHARED = ("unsafe", "reference")
"""Banks without an owner: every user sees them."""
DROPDOWNS = ("bank", "reference_bank")
NO_JOB = ("No generation with the safe denoiser yet.", None, [])


def choice_names(choices: list) -> list[str]:
    """Dropdown choices as names (gradio 3.41 sends plain values or (label, value) pairs)."""
    return [c[1] if isinstance(c, (list, tuple)) else c for c in choices]


def event_fns(script, is_img2img: bool) -> tuple[dict, dict[tuple[str, str], object]]:
    """(element config by elem_id, the Python function of each event by (elem_id, trigger))."""
    demo, _, config, by_id, elements = build(script, is_img2img)
    fns = {}
    for i, dep in enumerate(config["dependencies"]):
        for target in dep["targets"]:
            elem_id = by_id[target]["props"].get("elem_id")
            if elem_id and demo.fns[i].fn is not None:
                fns[(elem_id, dep["trigger"])] = demo.fns[i].fn
    return elements, fns


def prefix(is_img2img: bool) -> str:
    return f"script_{'img2img' if is_img2img else 'txt2img'}_safe_denoiser_"


@pytest.mark.parametrize("is_img2img", [False, True])
def test_the_page_built_for_everyone_lists_only_shared_banks(script, with_users, is_img2img):  # noqa: F811
    elements, _ = event_fns(script, is_img2img)
    for name in DROPDOWNS:
        names = choice_names(elements[prefix(is_img2img) + name]["props"]["choices"])
        assert set(SHARED) <= set(names), (name, names)
        assert PRIVATE not in names, f"{name}: the page must not show alice's private bank to everyone"


@pytest.mark.parametrize("is_img2img", [False, True])
def test_refresh_and_focus_list_the_banks_of_the_user_who_asks(script, with_users, is_img2img):  # noqa: F811
    _, fns = event_fns(script, is_img2img)
    refresh = fns[(prefix(is_img2img) + "refresh", "click")]
    focus = [fns[(prefix(is_img2img) + name, "focus")] for name in DROPDOWNS]
    for user, sees_private in (("alice", True), ("bob", False)):
        request = gr.Request(username=user)
        updates = [*refresh(request), *(fn(request) for fn in focus)]
        assert len(updates) == 4, "refresh updates both dropdowns; each focus its own"
        for update in updates:
            names = choice_names(update["choices"])
            assert set(SHARED) <= set(names) and (PRIVATE in names) == sees_private, (user, names)


@pytest.mark.parametrize("is_img2img", [False, True])
def test_the_diagnostics_panel_shows_the_last_job_of_the_user_who_asks(glue, script, with_users,  # noqa: F811
                                                                        is_img2img):
    _, fns = event_fns(script, is_img2img)
    show = fns[(prefix(is_img2img) + "show_diagnostics", "click")]
    p = harness.Processing(sd_model=shared.sd_model)
    p.user = "alice"
    result = harness.run_job(script, [{"enabled": True, "bank": PRIVATE, "preset": "custom", "mode": "constant",
                                       "strength": 1.0, "window_start": 0.0, "window_end": 1.0}], p=p)
    assert KEY_ERROR not in result.p.extra_generation_params
    alice, bob = show(gr.Request(username="alice")), show(gr.Request(username="bob"))
    assert bob == NO_JOB, "bob never ran a job"
    assert alice[0].startswith("Bank **") and PRIVATE in alice[0] and alice[1] is not None, alice
    assert glue.diagnostics(not is_img2img, gr.Request(username="alice")) == NO_JOB, "the job's own tab only"
