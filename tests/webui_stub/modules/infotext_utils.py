"""modules/infotext_utils.py: how the WebUI quotes infotext values and parses an infotext back.

``parse_generation_parameters`` keeps the WebUI's prompt/parameter split, its parameter regex,
unquoting and image-size handling; style extraction, hypernetwork and version fix-ups are left
out. ``generation_params_text`` is the line ``processing.create_infotext`` writes from
``p.extra_generation_params`` (and the WebUI's own parameters).
"""

from __future__ import annotations

import json
import re

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text

    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text

    try:
        return json.loads(text)
    except Exception:
        return text


def generation_params_text(generation_params: dict) -> str:
    """The parameter line of processing.create_infotext."""
    return ", ".join([k if k == v else f'{k}: {quote(v)}' for k, v in generation_params.items() if v is not None])


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None):
    res = {}

    prompt = ""
    negative_prompt = ""

    done_with_prompt = False

    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''

    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    for k, v in re_param.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)

            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            print(f"Error parsing \"{k}: {v}\"")

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    for key in skip_fields or []:
        res.pop(key, None)

    return res
