"""The config reference as markdown, generated from the schema (README embeds it; a test keeps it current)."""

from __future__ import annotations

import json
from typing import get_args, get_origin

from pydantic import BaseModel

from paravideo.config import RunConfig


def _type_name(annotation) -> str:
    origin = get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if str(origin).endswith("Literal"):
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    names = [_type_name(a) for a in args]
    return f"{getattr(origin, '__name__', str(origin))}[{', '.join(names)}]" if origin is list else " \\| ".join(names)


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default if field.default_factory is None else "(section)"
    return f"`{json.dumps(value)}`" if value != "(section)" else ""


def config_reference() -> str:
    """Markdown table of every config field: key, type, default, meaning."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, sfield in RunConfig.model_fields.items():
        model = sfield.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, field in model.model_fields.items():
            lines.append(f"| `{section}.{name}` | {_type_name(field.annotation)} | {_default(field)} | "
                         f"{field.description or ''} |")
    return "\n".join(lines)


START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def embed_reference(text: str) -> str:
    """`text` with the part between the config-reference markers replaced by the current table."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{config_reference()}\n{END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = Path(sys.argv[2])
        path.write_text(embed_reference(path.read_text()))
    else:
        print(config_reference())
