"""A self-contained SVG flame graph from collapsed stacks (no dependency, no script).

Each frame is a rectangle as wide as its samples, its callers below it (the roots at the
bottom, the hottest leftmost), coloured by its module (file), with a ``<title>`` tooltip
(name, samples, share) and a label cut to fit. Frames narrower than ``MIN_WIDTH`` pixels
are left out (they would not show), which also bounds the file's size.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from typing import Any

__all__ = ["render_svg"]

WIDTH = 1200
ROW = 17
PAD = 10
TOP = 34
MIN_WIDTH = 0.5
#: Roughly the width of one character of the 11 px labels.
CHAR = 6.6

#: Characters XML 1.0 cannot carry at all, escaped or not.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


class _Node:
    __slots__ = ("children", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.children: dict[str, _Node] = {}


def _tree(stacks: Iterable[tuple[str, int]]) -> _Node:
    root = _Node("all")
    for stack, count in stacks:
        if count <= 0:
            continue
        node = root
        node.count += count
        for name in stack.split(";"):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node(name)
            child.count += count
            node = child
    return root


def _depth(node: _Node, scale: float) -> int:
    deepest = 0
    todo = [(node, 0)]
    while todo:
        current, level = todo.pop()
        deepest = max(deepest, level)
        todo.extend((child, level + 1) for child in current.children.values()
                    if child.count * scale >= MIN_WIDTH)
    return deepest


def xml(text: str) -> str:
    """``text`` safe inside an XML element or attribute."""
    text = _NOT_XML.sub("\ufffd", text)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def _module(name: str) -> str:
    """The file part of "file:function:line" (what the colour follows)."""
    parts = name.rsplit(":", 2)
    return parts[0] if len(parts) == 3 else name


def _colour(name: str) -> str:
    if name in ("all", "(other)", "(truncated)"):
        return "rgb(200,200,200)"
    h = zlib.crc32(_module(name).encode("utf-8", "replace"))
    # Warm flame colours: red to yellow, the module choosing where.
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 150},{(h >> 16) % 60})"


def _label(name: str) -> str:
    """function:line (file) for a "file:function:line" frame: the function first."""
    parts = name.rsplit(":", 2)
    if len(parts) != 3:
        return name
    path, function, line = parts
    return f"{function}:{line} ({path.rsplit('/', 1)[-1]})"


def render_svg(stacks: Iterable[tuple[str, int]], title: str = "Flame graph",
               subtitle: str = "") -> str:
    """The SVG document for ``stacks`` ((collapsed stack, samples), root first)."""
    root = _tree(stacks)
    total = root.count
    scale = (WIDTH - 2 * PAD) / total if total else 0.0
    depth = _depth(root, scale) if total else 0
    height = TOP + (depth + 1) * ROW + PAD
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'font-family="Verdana, sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="rgb(250,250,245)"/>',
        f'<text x="{WIDTH / 2:.0f}" y="16" text-anchor="middle" font-size="15">'
        f"{xml(title)}</text>",
    ]
    if subtitle:
        out.append(f'<text x="{WIDTH / 2:.0f}" y="30" text-anchor="middle" '
                   f'fill="rgb(90,90,90)">{xml(subtitle)}</text>')
    # Depth first with an explicit stack (deep recursion in the profile must not recurse
    # here); each node is drawn at its caller's left edge plus its older siblings' widths.
    todo: list[tuple[_Node, int, float]] = [(root, 0, float(PAD))] if total else []
    while todo:
        node, level, x = todo.pop()
        width = node.count * scale
        y = height - PAD - (level + 1) * ROW
        out.append(_frame(node, x, y, width, total))
        left = x
        for child in sorted(node.children.values(), key=lambda c: (-c.count, c.name)):
            if child.count * scale >= MIN_WIDTH:
                todo.append((child, level + 1, left))
            left += child.count * scale
    out.append("</svg>\n")
    return "\n".join(out)


def _frame(node: _Node, x: float, y: float, width: float, total: int) -> str:
    share = 100.0 * node.count / total
    name = node.name
    tip = f"{name} ({node.count} samples, {share:.2f}%)"
    fits = int((width - 6) / CHAR)
    text = _label(name)
    parts: list[Any] = [
        f'<g><title>{xml(tip)}</title><rect x="{x:.2f}" y="{y}" width="{width:.2f}" '
        f'height="{ROW - 1}" rx="2" fill="{_colour(name)}"/>']
    if fits >= 3:
        if len(text) > fits:
            text = text[: fits - 2] + ".."
        parts.append(f'<text x="{x + 3:.2f}" y="{y + ROW - 5}">{xml(text)}</text>')
    parts.append("</g>")
    return "".join(parts)
