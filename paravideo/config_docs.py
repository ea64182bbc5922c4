"""The config reference as markdown, generated from the schema (README embeds it; a test keeps it current)."""

from __future__ import annotations

import json
from typing import get_args, get_origin

from pydantic import BaseModel

from paravideo.config import RunConfig
from paravideo.config_yaml import MAX_CONFIG_BYTES


def _type_name(annotation) -> str:
    origin = get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if str(origin).endswith("Literal"):
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    names = [_type_name(a) for a in args]
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(names)}]"
    return " \\| ".join(names)


def _bounds(field) -> str:
    """The field's numeric range as an interval, e.g. ` in [16, 4096]` or ` > 0` ('' when unbounded)."""
    lo = hi = None
    for item in field.metadata:
        for attr, sign in (("ge", "["), ("gt", "(")):
            if getattr(item, attr, None) is not None:
                lo = (sign, getattr(item, attr))
        for attr, sign in (("le", "]"), ("lt", ")")):
            if getattr(item, attr, None) is not None:
                hi = (sign, getattr(item, attr))
    if lo and hi:
        return f" in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    return f" {'<=' if hi[0] == ']' else '<'} {_num(hi[1])}" if hi else ""


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _meaning(field) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    why = extra.get("limit_reason")
    return (field.description or "") + (f" (limit: {why})" if why else "")


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default if field.default_factory is None else "(section)"
    return f"`{json.dumps(value)}`" if value != "(section)" else ""


def _rows(prefix: str, model: type[BaseModel]) -> list[str]:
    """One row per field of `model`; a nested section (cache.step) contributes its own rows."""
    rows = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows += _rows(f"{prefix}.{name}", field.annotation)
            continue
        rows.append(f"| `{prefix}.{name}` | {_type_name(field.annotation)}{_bounds(field)} | "
                    f"{_default(field)} | {_meaning(field)} |")
    return rows


def config_reference() -> str:
    """Markdown table of every config field: key, type, default, meaning."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, sfield in RunConfig.model_fields.items():
        model = sfield.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines += _rows(section, model)
    lines += ["", "Floats must be finite (`.inf` and `.nan` are refused); prompts must not be blank. A config file "
              f"is UTF-8 text of at most {MAX_CONFIG_BYTES >> 20} MiB, without YAML aliases (`*name`) or duplicate "
              "keys; `--set` values go through the same checks."]
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
