"""The accordion's presets panel as the page uses it: each button and the preset dropdown wired to
the right elements, acting for the user of the event (gradio's ``request.username``) and leaving the
preset store as the status line says. The page's script clicks "Load my default" by its element id."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest

from lib_safe_denoiser.generation.args import FIELD_NAMES
from lib_safe_denoiser.policy.builtin_presets import CUSTOM, DEFAULT_PRESET
from lib_safe_denoiser.policy.presets_store import SCOPE_GLOBAL, SCOPE_USER
from tests.glue.test_accordion import build
from tests.glue.test_policy_jobs import policy, users  # noqa: F401  (fixtures: policy and presets, logins)

SCRIPT_JS = Path(__file__).resolve().parents[2] / "javascript" / "safe_denoiser.js"
VALUES = [f for f in FIELD_NAMES if f not in ("enabled", "preset")]
"""What a preset holds, in the order the argument model lists the fields."""
MINE = {"bank": ["unsafe"], "mode": "odds", "strength": 0.7, "window_start": 0.1, "window_end": 0.6,
        "reference_bank": "reference", "prior": 0.2, "bandwidth": 2.5, "gate": False, "gate_margin": 1.2,
        "smoothing": 0.4}
"""alice's own recipe: every value differs from the defaults and from every built-in preset."""


class Page:
    """One tab's accordion: element ids -> gradio ids, and each event's (dependency, function)."""

    def __init__(self, script, is_img2img: bool) -> None:
        self.tab = "img2img" if is_img2img else "txt2img"
        demo, _, config, by_id, self.elements = build(script, is_img2img)
        self.ids = {elem_id: c["id"] for elem_id, c in self.elements.items()}
        self.events = {}
        for i, dep in enumerate(config["dependencies"]):
            for target in dep["targets"]:
                self.events[(by_id[target]["props"].get("elem_id"), dep["trigger"])] = (dep, demo.fns[i].fn)

    def elem(self, name: str) -> str:
        return f"script_{self.tab}_safe_denoiser_{name}"

    def id(self, name: str) -> int:
        return self.ids[self.elem(name)]

    def event(self, name: str, trigger: str, inputs: list[str], outputs: list[str]):
        """The event's function, after checking what it reads and what it updates."""
        dep, fn = self.events[(self.elem(name), trigger)]
        assert dep["inputs"] == [self.id(n) for n in inputs], (name, trigger)
        assert dep["outputs"] == [self.id(n) for n in outputs], (name, trigger)
        assert dep["show_progress"] == "hidden", "a status line, not a progress overlay"
        return fn


def request(user: str) -> gr.Request:
    return gr.Request(username=user)


def stored(glue, name: str, user: str | None) -> dict:
    """What the preset store holds under ``name`` for ``user`` (their own, else the global one)."""
    preset = glue.PRESET_STORE.resolve(name, user)
    return {"scope": preset.scope, "bank": list(preset.banks), **preset.values()}


@pytest.mark.parametrize("is_img2img", [False, True])
def test_the_page_script_finds_the_load_default_button(script, is_img2img):
    page = Page(script, is_img2img)
    ids = re.findall(r"#(script_\$\{tab\}_safe_denoiser_\w+)", SCRIPT_JS.read_text("utf-8"))
    assert ids, "the page script clicks the button by its id"
    for elem_id in ids:
        elem_id = elem_id.replace("${tab}", page.tab)
        assert page.elements[elem_id]["type"] == "button" and (elem_id, "click") in page.events, elem_id
    assert page.elem("load_default") in [i.replace("${tab}", page.tab) for i in ids]


def test_the_panel_starts_for_everyone(script, glue):
    page = Page(script, False)
    preset = page.elements[page.elem("preset")]["props"]
    assert preset["value"] == DEFAULT_PRESET and preset["choices"][-1] == CUSTOM
    assert DEFAULT_PRESET in preset["choices"]
    name = page.elements[page.elem("preset_name")]["props"]
    assert name["value"] == "" and name["max_lines"] == 1, "a preset's name is one line"
    assert not page.elements[page.elem("preset_global")]["props"].get("value"), "personal unless asked"
    status = page.elements[page.elem("preset_status")]["props"]
    assert status["interactive"] is False and status["value"].startswith("This WebUI has no logins")


def test_with_logins_the_page_built_for_everyone_names_nobody(script, glue, users):  # noqa: F811
    page = Page(script, False)
    assert page.elements[page.elem("preset_status")]["props"]["value"] == "", "nobody is signed in yet"


def test_save_rename_and_delete_act_for_the_user_who_asks(script, glue, policy, users):  # noqa: F811
    page = Page(script, False)
    save = page.event("preset_save", "click", ["preset_name", "preset_global", *VALUES], ["preset_status", "preset"])
    rename = page.event("preset_rename", "click", ["preset", "preset_name"], ["preset_status", "preset"])
    delete = page.event("preset_delete", "click", ["preset"], ["preset_status", "preset"])
    choose = page.event("preset", "input", ["preset"], ["preset_status", *VALUES])

    status, dropdown = save("my faces", False, *(MINE[f] for f in VALUES), request=request("alice"))
    assert status == "Saved 'my faces' (personal)."
    assert dropdown["value"] == "my faces" and "my faces" in dropdown["choices"]
    assert stored(glue, "my faces", "alice") == {"scope": SCOPE_USER, **MINE}
    assert "my faces" not in [p.name for p in glue.PRESET_STORE.visible("bob")], "alice's alone"
    status, *updates = choose("my faces", request=request("alice"))
    assert status == "Loaded 'my faces' (personal)."
    assert {f: u["value"] for f, u in zip(VALUES, updates, strict=True)} == MINE
    status, *updates = choose("my faces", request=request("bob"))
    assert status.startswith("Cannot load 'my faces'") and updates == [gr.update()] * len(VALUES)

    status, _ = save("everyone", True, *(MINE[f] for f in VALUES), request=request("alice"))
    assert status.startswith("Not saved: only operators may change global presets")
    status, _ = save("everyone", True, *(MINE[f] for f in VALUES), request=request("root"))
    assert status == "Saved 'everyone' (global)." and stored(glue, "everyone", "bob")["scope"] == SCOPE_GLOBAL

    assert rename("my faces", "ours", request=request("bob"))[0].startswith("Not renamed")
    status, dropdown = rename("my faces", "ours", request=request("alice"))
    assert status == "Renamed 'my faces' (personal) to 'ours'." and dropdown["value"] == "ours"
    assert stored(glue, "ours", "alice") == {"scope": SCOPE_USER, **MINE}

    assert delete("ours", request=request("bob"))[0].startswith("Not deleted")
    status, dropdown = delete("ours", request=request("alice"))
    assert status == "Deleted 'ours' (personal)." and dropdown["value"] == CUSTOM
    assert "ours" not in [p.name for p in glue.PRESET_STORE.visible("alice")]


def test_the_default_is_each_users_own_and_the_page_loads_it(script, glue, policy, users):  # noqa: F811
    page = Page(script, False)
    save = page.event("preset_save", "click", ["preset_name", "preset_global", *VALUES], ["preset_status", "preset"])
    make_default = page.event("preset_default", "click", ["preset"], ["preset_status"])
    load_default = page.event("load_default", "click", [], ["enabled", "preset", "preset_status", *VALUES])
    choices = page.event("preset", "focus", [], ["preset"])

    save("mine", False, *(MINE[f] for f in VALUES), request=request("alice"))
    assert make_default("mine", request=request("alice")) == "Your default is now 'mine' (personal)."
    assert glue.PRESET_STORE.default("alice").name == "mine" and glue.PRESET_STORE.default("bob") is None
    assert "mine" in choices(request("alice"))["choices"] and "mine" not in choices(request("bob"))["choices"]

    accordion, dropdown, status, *updates = load_default(request=request("alice"))
    assert accordion["visible"] is True and dropdown["value"] == "mine" and status == "Loaded 'mine' (personal)."
    assert {f: u["value"] for f, u in zip(VALUES, updates, strict=True)} == MINE
    accordion, dropdown, status, *updates = load_default(request=request("bob"))
    assert accordion["visible"] is True and "value" not in dropdown and "mine" not in dropdown["choices"]
    assert status == "Your presets are yours alone; signed in as 'bob'."
    assert updates == [gr.update()] * len(VALUES), "no default: the page keeps its values"

    policy(enforce=True, preset="house", hide_accordion=True)
    assert load_default(request=request("alice"))[0]["visible"] is False, "hidden from users"
    assert load_default(request=request("root"))[0]["visible"] is True, "never from operators"
    assert make_default(CUSTOM, request=request("alice")) == "Your default preset is cleared."
    assert glue.PRESET_STORE.default("alice") is None
    glue.POLICY_STORE.path.write_bytes(b"{ broken")
    assert load_default(request=request("alice"))[0]["visible"] is False, "an unreadable policy hides it"
    assert load_default(request=request("root"))[0]["visible"] is True, "operators can still repair it"
