"""The read-only expression language of probes: conditions and logpoint templates.

Parsed with ``ast`` and refused at open if they call, assign, import or build anything;
evaluated here, never by ``eval``: names, attributes from an object's ``__dict__`` (or
its class's, or a slot), subscripts of exact dicts, lists, tuples and strings by a
constant or a name, constants; conditions add comparisons of plain values,
``and``/``or``/``not`` and ``is``. Nothing of the host's runs.
"""

from __future__ import annotations

import ast
import types
from types import FrameType
from typing import Any

from prodbug.agent import introspect
from prodbug.errors import BadRequest

__all__ = ["MAX_TEXT", "Template", "Unreadable", "compile_expression", "evaluate",
           "parse_template", "truth"]

MAX_TEXT = 2000  # characters of an expression or a template
_MAX_EXPRESSIONS = 20
_MAX_DICT_SCAN = 10_000
_PLAIN = frozenset({int, float, bool, str, bytes, type(None)})
_CONTAINERS = frozenset({dict, list, tuple, str})
_MEMBER = types.MemberDescriptorType


class Unreadable(Exception):
    """An expression's value cannot be read without running the host's code."""


# -- the expression language -----------------------------------------------------------------

_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot,
            ast.In, ast.NotIn)
_REFUSED = {
    ast.Call: "calls", ast.NamedExpr: "assignments (:=)", ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions", ast.GeneratorExp: "generators", ast.Await: "await",
    ast.Yield: "yield", ast.YieldFrom: "yield", ast.JoinedStr: "f-strings",
    ast.Starred: "starred expressions", ast.Slice: "slices",
}


def _refuse(text: str, what: str) -> BadRequest:
    return BadRequest(f"{text!r}: {what} are not allowed in a probe expression (names, "
                      f"attributes, subscripts of dicts/lists/tuples/strings and constants "
                      f"only; conditions may also compare and use and/or/not)")


def _check(node: ast.AST, text: str, condition: bool) -> None:
    for kind, what in _REFUSED.items():
        if isinstance(node, kind):
            raise _refuse(text, what)
    if isinstance(node, ast.Name | ast.Attribute | ast.Subscript) and \
            not isinstance(node.ctx, ast.Load):
        raise _refuse(text, "assignments")
    if isinstance(node, ast.Constant | ast.Name):
        return
    if isinstance(node, ast.Attribute):
        _check(node.value, text, condition)
        return
    if isinstance(node, ast.Subscript):
        _check(node.value, text, condition)
        key = node.slice
        if isinstance(key, ast.UnaryOp) and isinstance(key.op, ast.USub) and \
                isinstance(key.operand, ast.Constant):
            return
        if not isinstance(key, ast.Constant | ast.Name):
            raise _refuse(text, "subscripts other than a constant or a name")
        return
    if condition and isinstance(node, ast.Compare) and all(
            isinstance(op, _COMPARE) for op in node.ops):
        for part in (node.left, *node.comparators):
            _check(part, text, condition)
        return
    if condition and isinstance(node, ast.BoolOp):
        for part in node.values:
            _check(part, text, condition)
        return
    if isinstance(node, ast.UnaryOp) and (
            isinstance(node.op, ast.USub) or (condition and isinstance(node.op, ast.Not))):
        _check(node.operand, text, condition)
        return
    raise _refuse(text, f"{type(node).__name__} expressions")


def compile_expression(text: str, *, condition: bool = False) -> ast.expr:
    """``text`` parsed and checked: raises BadRequest, saying why, if it could do more
    than read (assign, call, import, build functions or comprehensions)."""
    if not text.strip():
        raise BadRequest("an empty expression")
    if len(text) > MAX_TEXT:
        raise BadRequest(f"an expression is limited to {MAX_TEXT} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise BadRequest(f"{text!r} is not an expression: {exc.msg}") from None
    _check(tree.body, text, condition)
    return tree.body


def _label(node: ast.expr, text: str) -> str:
    """The name a value is known by, for redaction: ``password`` in ``user.password``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
            type(node.slice.value) is str:
        return node.slice.value
    return text


#: A compiled template: text pieces and (source, expression, label) triples.
Template = list[str | tuple[str, ast.expr, str]]


def parse_template(template: str) -> Template:
    """``"text {expr} more"`` as pieces; ``{{`` and ``}}`` stand for braces."""
    if len(template) > MAX_TEXT:
        raise BadRequest(f"a logpoint template is limited to {MAX_TEXT} characters")
    pieces: Template = []
    text: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char in "{}" and template[i:i + 2] == char * 2:
            text.append(char)
            i += 2
            continue
        if char == "}":
            raise BadRequest("a '}' with no '{' in the template (write '}}' for a brace)")
        if char != "{":
            text.append(char)
            i += 1
            continue
        end = template.find("}", i + 1)
        if end < 0:
            raise BadRequest("a '{' with no '}' in the template (write '{{' for a brace)")
        source = template[i + 1:end]
        if text:
            pieces.append("".join(text))
            text = []
        node = compile_expression(source)
        pieces.append((source.strip(), node, _label(node, source.strip())))
        i = end + 1
    if text:
        pieces.append("".join(text))
    if sum(1 for piece in pieces if not isinstance(piece, str)) > _MAX_EXPRESSIONS:
        raise BadRequest(f"a logpoint takes at most {_MAX_EXPRESSIONS} expressions")
    return pieces


def _name(frame: FrameType, name: str) -> Any:
    value = introspect.frame_local(frame, name)
    if value is not introspect.MISSING:
        return value
    for scope in (frame.f_globals, frame.f_builtins):
        if type(scope) is dict:
            value = dict.get(scope, name, introspect.MISSING)
            if value is not introspect.MISSING:
                return value
    raise Unreadable(f"{name}: not defined here")


def _attribute(obj: Any, name: str) -> Any:
    value = introspect.lookup(obj, name)
    if value is not introspect.MISSING:
        return value
    cls = type(obj)
    for slot, descr in introspect.slot_descriptors(cls):
        if slot == name:
            try:
                return _MEMBER.__get__(descr, obj, cls)
            except AttributeError:
                break
    raise Unreadable(f".{name}: not in its __dict__ (properties and methods are not run)")


def _subscript(container: Any, key: Any) -> Any:
    kind = type(container)
    if kind not in _CONTAINERS:
        raise Unreadable(f"[...] of a {introspect.type_name(kind)} (only dict, list, tuple "
                          f"and str are read)")
    if type(key) not in _PLAIN:
        raise Unreadable("[...]: the key must be a plain value (int, str, ...)")
    if kind is dict:
        # Scanned rather than looked up: a lookup may compare the key with a host object's
        # ``__eq__`` (a hash collision); exact types compare in C.
        for n, (stored, value) in enumerate(dict.items(container)):
            if n >= _MAX_DICT_SCAN:
                raise Unreadable(f"[{key!r}]: not among the first {_MAX_DICT_SCAN} keys")
            if type(stored) is type(key) and stored == key:
                return value
        raise Unreadable(f"[{key!r}]: no such key")
    if type(key) is not int:
        raise Unreadable("[...]: a list, tuple or str index must be an int")
    try:
        return kind.__getitem__(container, key)
    except IndexError:
        raise Unreadable(f"[{key}]: out of range") from None


def truth(value: Any) -> bool:
    kind = type(value)
    if kind in _PLAIN or kind in (list, tuple, dict, set, frozenset):
        return bool(value)
    raise Unreadable(f"the truth of a {introspect.type_name(kind)} (its __bool__ is not run)")


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, ast.Is):
        return left is right
    if isinstance(op, ast.IsNot):
        return left is not right
    if isinstance(op, ast.In | ast.NotIn):
        found = _contains(right, left)
        return found if isinstance(op, ast.In) else not found
    if type(left) not in _PLAIN or type(right) not in _PLAIN:
        raise Unreadable("comparisons take plain values (int, float, str, bytes, bool, "
                          "None): another type's __eq__ or __lt__ is not run")
    try:
        if isinstance(op, ast.Eq):
            return bool(left == right)
        if isinstance(op, ast.NotEq):
            return bool(left != right)
        if isinstance(op, ast.Lt):
            return bool(left < right)
        if isinstance(op, ast.LtE):
            return bool(left <= right)
        if isinstance(op, ast.Gt):
            return bool(left > right)
        return bool(left >= right)
    except TypeError as exc:  # "a" < 1
        raise Unreadable(str(exc)) from None


def _contains(container: Any, item: Any) -> bool:
    kind = type(container)
    if type(item) not in _PLAIN:
        raise Unreadable("'in' takes a plain value on its left")
    if kind is str or kind is bytes:
        if type(item) is not kind:
            raise Unreadable("'in' a str takes a str (a bytes a bytes)")
        return item in container
    if kind in (list, tuple, dict, set, frozenset):
        for n, element in enumerate(container):
            if n >= _MAX_DICT_SCAN:
                raise Unreadable(f"'in': more than {_MAX_DICT_SCAN} items")
            if type(element) is type(item) and element == item:
                return True
        return False
    raise Unreadable(f"'in' a {introspect.type_name(kind)}")


def evaluate(node: ast.expr, frame: FrameType) -> Any:
    """The value of a checked expression in ``frame``; raises Unreadable."""
    if isinstance(node, ast.Name):
        return _name(frame, node.id)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Attribute):
        return _attribute(evaluate(node.value, frame), node.attr)
    if isinstance(node, ast.Subscript):
        return _subscript(evaluate(node.value, frame), evaluate(node.slice, frame))
    if isinstance(node, ast.UnaryOp):
        value = evaluate(node.operand, frame)
        if isinstance(node.op, ast.Not):
            return not truth(value)
        if type(value) not in (int, float):
            raise Unreadable("'-' takes a number")
        return -value
    if isinstance(node, ast.BoolOp):
        is_and = isinstance(node.op, ast.And)
        value = None
        for part in node.values:
            value = evaluate(part, frame)
            if truth(value) != is_and:
                return value
        return value
    if isinstance(node, ast.Compare):
        left = evaluate(node.left, frame)
        for op, part in zip(node.ops, node.comparators):  # noqa: B905 (3.10: equal lengths)
            right = evaluate(part, frame)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    raise Unreadable(f"{type(node).__name__}")  # refused at open: never reached
