"""Strict YAML reading for search-space files: 1e-5 is a float (YAML 1.2), a duplicate
key is an error with its line number, and every message names the file (_Where)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NoReturn

import yaml

from ablate.core.errors import AblateError
from ablate.space.model import TOP_KEYS


class _Where:
    """Names the file in every message, so an error says where to look."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> NoReturn:
        raise AblateError(f"search space {self.path}: {key}: {message}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-5 as a float (YAML 1.2) and rejects duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _read_yaml(text: str, where: _Where) -> dict:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise AblateError(f"search space {where.path}{line}: malformed YAML: {problem}") from None
    if data is None:
        raise AblateError(f"search space {where.path} is empty; see search_spaces/quick.yaml")
    if not isinstance(data, dict):
        raise AblateError(f"search space {where.path} must be a mapping of {', '.join(TOP_KEYS)}")
    return data
