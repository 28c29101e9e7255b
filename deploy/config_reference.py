"""docs/config-reference.md, written from the config's own declarations: every key, its type,
default, bounds and description, so the reference cannot drift from the code (a new user found
``links.retrain_every``'s default, train once, only in the code: stop 45).

``python -m mlink.deploy.config_reference > docs/config-reference.md``; a test checks the
committed page is current.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mlink.deploy.config import PipelineConfig

__all__ = ["reference_markdown"]

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="))
_HEADER = """# Config reference

Every key of a pipeline config (YAML), as `deploy/config.py` and `deploy/config_sections.py`
declare it: type, default (`required` when there is none), bounds and what it does. Unknown keys
are errors. Written by `python -m mlink.deploy.config_reference > docs/config-reference.md`
(`tests/test_config_reference.py` checks it is current); examples in `deploy/configs/`.
"""


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds (also in a list or an optional), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation: Any) -> str:
    if inspect.isclass(annotation) and not typing.get_args(annotation):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    for module in ("mlink.deploy.config_sections.", "mlink.deploy.security.", "mlink.deploy."):
        text = text.replace(module, "")
    return text.replace("NoneType", "None")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`"


def _bounds(field: Any) -> str:
    found = []
    for item in field.metadata:
        for attr, sign in _BOUNDS:
            if getattr(item, attr, None) is not None:
                found.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            found.append(f"matches `{item.pattern}`")
    return ", ".join(found)


def _row(key: str, field: Any) -> str:
    described = (field.description or "").replace("|", "\\|").replace("\n", " ")
    kind = _type_name(field.annotation).replace("|", "&#124;")
    return f"| `{key}` | {kind} | {_default(field)} | {_bounds(field)} | {described} |"


def _table(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """The section's table, then each section it holds, under its own heading."""
    yield "| key | type | default | bounds | what it does |"
    yield "|---|---|---|---|---|"
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        is_list = typing.get_origin(field.annotation) in (list, tuple)
        key = f"{prefix}{name}{'[]' if is_list else ''}"
        yield _row(key, field)
        if (section := _section(field.annotation)) is not None:
            nested.append((key, section))
    for key, section in nested:
        yield ""
        yield f"## `{key}`"
        yield ""
        doc = inspect.getdoc(section) or ""
        if doc:
            yield doc.split("\n\n")[0].replace("\n", " ")
            yield ""
        yield from _table(section, f"{key}.")


def reference_markdown() -> str:
    lines = [_HEADER, "## Top level", ""]
    lines += list(_table(PipelineConfig, ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
