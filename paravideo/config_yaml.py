"""A bounded YAML reader for config files and `--set` values: a config is small, plain data, so anything else
(aliases, deep nesting, duplicate keys, huge files, bytes that are not UTF-8) is refused with one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from paravideo.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # real configs are a few KiB; a bigger file is almost surely the wrong file
MAX_NODES = 50_000  # ~5x the longest plausible prompt schedule; pure-Python parsing stays about a second
MAX_DEPTH = 16  # the deepest real config is 4 levels (video.prompts[i].text); PyYAML composes recursively


class RefusedYAML(ValueError):
    """YAML that parses but is not accepted in a config: the message says why, `line` (1-based) where."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (billion-laughs expansion), counts and depth-limits nodes and rejects
    duplicate mapping keys at any level, naming the key path and both lines."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._path: list[str] = []
        self._nodes = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise RefusedYAML(f"YAML aliases (*{event.anchor}) are not supported in config files; "
                              "write the value out in full", line)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise RefusedYAML(f"more than {MAX_NODES} YAML values; a config needs far fewer", line)
        if len(self._path) >= MAX_DEPTH:
            raise RefusedYAML(f"nesting deeper than {MAX_DEPTH} levels; a config needs 4 or 5", line)
        if isinstance(index, yaml.ScalarNode):
            self._path.append(str(index.value))
        elif isinstance(index, int):
            self._path.append(f"[{index}]")
        else:  # a mapping key or the document root: no path component of its own
            self._path.append("")
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # construction rejects non-scalar keys as unhashable
            line, ident = key.start_mark.line + 1, (key.tag, key.value)
            if ident in seen:
                first = seen[ident]
                where = ".".join([p for p in self._path if p] + [str(key.value)]).replace(".[", "[")
                raise RefusedYAML(f"duplicate key {where} (first set on line {first}); "
                                  "YAML would silently keep only the last value", line)
            seen[ident] = line
        return node


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with the config loader's bounds; raises RefusedYAML or yaml.YAMLError."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    except ValueError as err:  # e.g. an integer literal beyond Python's 4300-digit conversion limit
        if isinstance(err, RefusedYAML):
            raise
        raise RefusedYAML(f"unreadable value: {err}") from None
    finally:
        loader.dispose()


def read_config_text(path: Path) -> str:
    """The file's text: at most MAX_CONFIG_BYTES, decoded as UTF-8; ConfigError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded even for /dev/zero or a pipe
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB, the limit for a config "
                          "file (real configs are a few KiB); is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"config {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} "
                          f"(line {line}) cannot be decoded; save the file as UTF-8") from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark some editors write


def load_yaml_file(path: Path) -> Any:
    """Parse a config file with every bound applied; any failure is one ConfigError naming the file (and line)."""
    text = read_config_text(path)
    try:
        return parse_yaml(text)
    except RefusedYAML as err:
        raise ConfigError(f"config {path}" + (f", line {err.line}" if err.line else "") + f": {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
