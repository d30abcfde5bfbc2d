"""Every example in the public API's docstrings runs, as written, against the simulator.

The public API is what ``kf2v_tasks.__all__`` and the flows package export. Each fenced
``python`` block runs in a fresh folder holding ``first.png``, ``last.png``, keyframes
``k1.png`` … ``k4.png`` and a two-row ``manifest.csv``, with the
environment a user would set (``DASHSCOPE_API_KEY``, ``DASHSCOPE_HTTP_BASE_URL``) pointing
at a simulator, on a real Prefect server. Top-level ``await`` is allowed, as in a notebook.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import re
import textwrap

import pytest

import kf2v_tasks
from kf2v_tasks.simulator import RuntimeDistribution

from helpers import fast_service, make_frame, pointed_at

_FLOW_MODULES = ["flows.single", "flows.batch", "flows.storyboard", "flows.retry"]
_FENCE = re.compile(r"```python\n(.*?)```", re.S)


def _public_objects():
    seen: dict = {}
    for name in kf2v_tasks.__all__:
        if name != "__version__":
            seen[name] = getattr(kf2v_tasks, name)
    for module_name in _FLOW_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if all(obj is not known for known in seen.values()):  # re-exports: once
                seen[f"{module_name}.{name}"] = obj
    seen["kf2v_tasks"] = kf2v_tasks
    seen["kf2v_tasks.tasks"] = importlib.import_module("kf2v_tasks.tasks")
    for name, obj in list(seen.items()):
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if not attr.startswith("_") and (callable(value) or isinstance(value, property)):
                    seen[f"{name}.{attr}"] = value
    return seen


def _examples():
    found = []
    for name, obj in _public_objects().items():
        doc = inspect.getdoc(obj) or ""
        if obj is not kf2v_tasks and getattr(obj, "__doc__", None) is None:
            continue
        for i, block in enumerate(_FENCE.findall(doc)):
            found.append(pytest.param(textwrap.dedent(block), id=f"{name}[{i}]"))
    return found


EXAMPLES = _examples()


def test_the_public_api_has_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code, prefect_server, tmp_path, monkeypatch):
    make_frame(tmp_path / "first.png")
    make_frame(tmp_path / "last.png", colour=(40, 80, 200))
    for i, colour in enumerate([(200, 80, 40), (40, 80, 200), (40, 200, 80), (200, 200, 40)]):
        make_frame(tmp_path / f"k{i + 1}.png", colour=colour)
    (tmp_path / "manifest.csv").write_text(
        "id,first_frame,last_frame,prompt\n"
        "dawn,first.png,last.png,a slow dolly shot\n"
        "dusk,last.png,first.png,the light fades\n"
    )
    monkeypatch.chdir(tmp_path)
    # "BLOCK_NAME" is Prefect's placeholder in block examples (its block test asks for it);
    # block names allow no capitals, so it runs under a real name.
    code = code.replace('"BLOCK_NAME"', '"docs-example"')
    tree = compile(code, "<example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict = {"__name__": "__example__"}
    with (
        fast_service(RuntimeDistribution(kind="fixed", low=30), seed=7) as sim,
        pointed_at(sim, monkeypatch),
    ):
        result = eval(tree, namespace)
        if inspect.iscoroutine(result):
            asyncio.run(result)
