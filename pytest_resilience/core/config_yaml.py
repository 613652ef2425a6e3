"""Reading a YAML policy file with the line of every key: PyYAML composes the document
into nodes, which carry their marks, and :class:`_Nodes` turns them into plain values,
keeping each key's line (``yaml.safe_load`` would lose them). PyYAML is the ``yaml``
extra, imported only when a YAML file is read.
"""

from __future__ import annotations

from typing import Any, Final

from .config_read import PolicyError
from .toml_lines import MAX_DEPTH, Path_, dotted

__all__ = ["MAX_YAML_NODES", "parse_yaml"]

#: The most nodes a YAML file may expand to (aliases repeat what they name): a policy
#: file holds a few hundred at most, and a "billion laughs" file must not hang the reader.
MAX_YAML_NODES: Final = 100_000


def parse_yaml(source: str, where: str) -> tuple[dict[str, Any], dict[Path_, int]]:
    """A YAML document as plain values, and the line of every key and list item (from
    PyYAML's node marks). Keys are kept as written: ``on:`` is the key ``"on"``, not
    YAML 1.1's ``True``. Raises :class:`PolicyError` when PyYAML is not installed, for
    YAML that does not parse, several documents, a key that is not plain text, a key given
    twice, nesting deeper than :data:`~pytest_resilience.core.toml_lines.MAX_DEPTH`, or a
    document that expands to more than :data:`MAX_YAML_NODES` nodes."""
    try:
        import yaml  # noqa: PLC0415 - an optional extra, only for YAML files
    except ImportError:
        raise PolicyError(
            where,
            1,
            "",
            "reading a YAML policy needs PyYAML: install pytest-resilience[yaml] "
            "(or write the policy as TOML)",
        ) from None
    loader = yaml.SafeLoader(source)
    try:
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
        if root is None:
            return {}, {}
        return _Nodes(loader, where).document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = f"invalid YAML: {exc.problem or exc.context}"
        if mark is not None:
            message += f" (column {mark.column + 1})"
        if exc.problem and exc.context:
            started = exc.context_mark
            at = f" that starts at line {started.line + 1}" if started is not None else ""
            message += f", {exc.context}{at}"
        raise PolicyError(where, line, "", message) from None
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        position = getattr(exc, "position", 0)
        line = source.count("\n", 0, position) + 1
        raise PolicyError(where, line, "", f"invalid YAML: {exc}") from None


class _Nodes:
    """A composed YAML document as plain values, with the line of each key and item."""

    def __init__(self, loader: Any, where: str) -> None:
        self.loader, self.where = loader, where
        self.lines: dict[Path_, int] = {}
        self.count = 0

    def document(self, root: Any) -> tuple[dict[str, Any], dict[Path_, int]]:
        import yaml  # noqa: PLC0415 - only reached once the import above worked

        if not isinstance(root, yaml.MappingNode):
            raise PolicyError(
                self.where,
                root.start_mark.line + 1,
                "",
                f"a policy file is a mapping of sections, not {_yaml_kind(root)}",
            )
        value = self.value(root, ())
        assert isinstance(value, dict)
        return value, self.lines

    def value(self, node: Any, at: Path_) -> Any:
        import yaml  # noqa: PLC0415

        self.count += 1
        if self.count > MAX_YAML_NODES:
            raise PolicyError(
                self.where,
                node.start_mark.line + 1,
                dotted(at),
                f"the document expands to more than {MAX_YAML_NODES} values (aliases?)",
            )
        if len(at) > MAX_DEPTH and not isinstance(node, yaml.ScalarNode):
            raise PolicyError(
                self.where,
                node.start_mark.line + 1,
                dotted(at[:1]),
                f"nested too deep: more than {MAX_DEPTH} levels of mappings and lists",
            )
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, item in node.value:
                line = key_node.start_mark.line + 1
                if (
                    not isinstance(key_node, yaml.ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    raise PolicyError(self.where, line, dotted(at), "a key must be plain text")
                key = str(key_node.value)
                if key in out:
                    first = self.lines[(*at, key)]
                    raise PolicyError(
                        self.where, line, dotted((*at, key)), f"given twice (first at line {first})"
                    )
                self.lines[(*at, key)] = line
                out[key] = self.value(item, (*at, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*at, index)] = item.start_mark.line + 1
                items.append(self.value(item, (*at, index)))
            return items
        return self.loader.construct_object(node)


def _yaml_kind(node: Any) -> str:
    import yaml  # noqa: PLC0415

    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the value {str(node.value)[:40]!r}"
