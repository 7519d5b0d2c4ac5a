"""Rule expressions: the Common Expression Language (CEL), parsed by cel-python, compiled once to closures.

Why this shape: CEL is a small, non-Turing-complete language made for exactly
this (no loops, no assignment, no side effects, no access to the host
language). cel-python's LALR grammar of the CEL spec parses the text; we
never evaluate user text with ``eval``/``exec``. The parse tree is then
compiled, once per mapping, into nested Python closures over a whitelist:
every node kind, operator, variable and function is looked up in a table
here, and anything not in it is a compile error with a message. Values are
only ever read through ``dict.get``/list indexing, so an expression cannot
reach an attribute of a Python object. The cost of one evaluation is bounded
by the size of the expression (at most :data:`MAX_NODES` nodes, no loops;
integers are kept to 64 bits and strings built by ``+`` to
:data:`MAX_STRING`).

An expression sees ``after`` (the row's new image; for a delete the deleted
row), ``before`` (the old image or null), ``row`` (same as ``after``), ``op``
("c", "u", "d", "r"), ``origin`` (the node where the change happened),
``source_node``, ``table`` and ``commit_time`` (the capture/commit time).
The functions are in :mod:`engine.functions`.
"""

from __future__ import annotations

import difflib
from decimal import Decimal
from typing import Any, Callable

import lark
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import celbytes, celstr

from .functions import FUNCTIONS, METHODS

MAX_LENGTH = 4000  # characters of expression text
MAX_NODES = 400  # compiled nodes: bounds the work of one evaluation
MAX_STRING = 1_000_000  # characters a string built by + may reach
INT_MIN, INT_MAX = -(2 ** 63), 2 ** 63 - 1

# (after, before, event) -> value
Evaluator = Callable[[Any, Any, Any], Any]

VARIABLES: dict[str, Evaluator] = {
    "after": lambda a, b, e: a,
    "row": lambda a, b, e: a,
    "before": lambda a, b, e: b,
    "op": lambda a, b, e: e.op._value_,  # .value is a property of Enum: slower
    "origin": lambda a, b, e: e.origin,
    "source_node": lambda a, b, e: e.source_node,
    "table": lambda a, b, e: str(e.table),
    "commit_time": lambda a, b, e: e.captured_at,
}
VARIABLE_HELP = {
    "after": "the row's new image (for a delete: the deleted row)",
    "row": "the same as after",
    "before": "the row's old image (null for inserts and where the source does not send it)",
    "op": 'the operation: "c" insert, "u" update, "d" delete, "r" snapshot read',
    "origin": "the node where the change first happened",
    "source_node": "the node that captured the change",
    "table": "the source table, schema-qualified",
    "commit_time": "when the change was committed (captured) at the source",
}


class ExpressionError(ValueError):
    """An expression that cannot be compiled, or a value it cannot work with at run time."""


_parser: CELParser | None = None


def _parse(text: str) -> lark.Tree:
    global _parser
    if _parser is None:
        _parser = CELParser()
    return _parser.parse(text)


# what running a compiled expression may raise besides ExpressionError (Expression.fault turns them into one)
RUN_ERRORS = (ValueError, TypeError, ArithmeticError, IndexError, KeyError, AttributeError)


class Expression:
    """One compiled expression: call ``evaluate(after, before, event)``.

    ``run`` is the same closure without the error translation, for per-row loops that catch
    :data:`RUN_ERRORS` themselves and raise ``fault(exc)`` (one call less per evaluation).
    """

    __slots__ = ("text", "run", "columns")

    def __init__(self, text: str, run: Evaluator, columns: set[str]):
        self.text = text
        self.run = run
        self.columns = columns  # the row columns it reads (after.x / before.x / row.x)

    def evaluate(self, after, before, event):
        try:
            return self.run(after, before, event)
        except RUN_ERRORS as exc:
            raise self.fault(exc) from None

    def fault(self, exc: Exception) -> ExpressionError:
        """The error to raise for ``exc`` from ``run``: naming the expression (an ExpressionError as it is)."""
        return exc if isinstance(exc, ExpressionError) else ExpressionError(f"{exc} (in {self.text})")

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def compile_expression(text: Any, *, columns: list[str] | None = None, extra: dict[str, Any] | None = None,
                       functions: dict[str, Callable] | None = None) -> Expression:
    """Compile ``text``; raise :class:`ExpressionError` with what is wrong and where.

    ``columns`` (when known) are the source table's columns: ``after.x`` of another name is an error.
    ``extra`` adds named constants; ``functions`` replaces the function table (for keyed helpers).
    """
    if not isinstance(text, str):
        raise ExpressionError(f"an expression is text, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ExpressionError("empty expression")
    try:
        tree = _parse(text)
    except CELParseError as exc:
        at = f" at line {exc.line}, column {exc.column}" if exc.line else ""
        raise ExpressionError(f"not a valid expression{at}: {_first_line(exc)}") from None
    except (lark.exceptions.LarkError, RecursionError, ValueError) as exc:
        raise ExpressionError(f"not a valid expression: {_first_line(exc)}") from None
    compiler = _Compiler(columns, extra or {}, FUNCTIONS if functions is None else functions)
    try:
        root = compiler.node(tree)
    except RecursionError:
        raise ExpressionError("expression nested too deeply") from None
    except ExpressionError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # a literal Python cannot take (e.g. a huge float)
        raise ExpressionError(f"not a valid expression: {exc}") from None
    return Expression(text, root, compiler.read)


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:3])[:300] if lines else type(exc).__name__


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------ run-time helpers (values only)

def _check_int(value):
    if type(value) is int and not INT_MIN <= value <= INT_MAX:
        raise ExpressionError("integer overflow (beyond 64 bits)")
    return value


def _numbers(x, y):
    if x is None or y is None:
        raise ExpressionError("arithmetic on null (use coalesce(x, 0))")
    if isinstance(x, bool) or isinstance(y, bool):
        raise ExpressionError("arithmetic on a boolean")
    if isinstance(x, Decimal) and isinstance(y, float):
        return x, Decimal(repr(y))
    if isinstance(y, Decimal) and isinstance(x, float):
        return Decimal(repr(x)), y
    return x, y


def _add(x, y):
    if isinstance(x, str) and isinstance(y, str):
        if len(x) + len(y) > MAX_STRING:
            raise ExpressionError("string too long")
        return x + y
    if isinstance(x, list) and isinstance(y, list):
        if len(x) + len(y) > MAX_STRING:
            raise ExpressionError("list too long")
        return x + y
    if isinstance(x, (str, list)) or isinstance(y, (str, list)):
        raise ExpressionError(f"cannot add {_kind(x)} and {_kind(y)} (use string(x) or concat(...))")
    x, y = _numbers(x, y)
    return _check_int(x + y)


def _sub(x, y):
    x, y = _numbers(x, y)
    if isinstance(x, str) or isinstance(y, str):
        raise ExpressionError("cannot subtract text")
    return _check_int(x - y)


def _mul(x, y):
    x, y = _numbers(x, y)
    if not isinstance(x, (int, float, Decimal)) or not isinstance(y, (int, float, Decimal)):
        raise ExpressionError(f"cannot multiply {_kind(x)} and {_kind(y)}")
    return _check_int(x * y)


def _div(x, y):
    x, y = _numbers(x, y)
    if not isinstance(x, (int, float, Decimal)) or not isinstance(y, (int, float, Decimal)):
        raise ExpressionError(f"cannot divide {_kind(x)} by {_kind(y)}")
    if y == 0:
        raise ExpressionError("division by zero")
    if type(x) is int and type(y) is int:  # CEL: integer division truncates toward zero
        q = abs(x) // abs(y)
        return q if (x >= 0) == (y >= 0) else -q
    return x / y


def _mod(x, y):
    x, y = _numbers(x, y)
    if type(x) is not int or type(y) is not int:
        raise ExpressionError("% needs integers")
    if y == 0:
        raise ExpressionError("modulus by zero")
    r = abs(x) % abs(y)
    return r if x >= 0 else -r


def _compare(op):
    def compare(x, y):
        if x is None or y is None:
            raise ExpressionError("ordering comparison with null")
        x, y = _numbers(x, y) if not isinstance(x, str) else (x, y)
        try:
            return op(x, y)
        except TypeError:
            raise ExpressionError(f"cannot compare {_kind(x)} with {_kind(y)}") from None
    return compare


def _equal(x, y):
    if isinstance(x, bool) != isinstance(y, bool):
        return False
    if isinstance(x, Decimal) and isinstance(y, float) or isinstance(y, Decimal) and isinstance(x, float):
        x, y = _numbers(x, y)
    return x == y


def _in(x, y):
    if isinstance(y, (list, dict)):
        return x in y
    if isinstance(y, str) and isinstance(x, str):
        return x in y
    raise ExpressionError(f"'in' needs a list, map or text on the right, not {_kind(y)}")


def _truth(value) -> bool:
    if value is True or value is False:
        return value
    raise ExpressionError(f"expected true or false, got {_kind(value)}")


def _kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "double", str: "string", Decimal: "decimal", list: "list",
            dict: "map", bytes: "bytes"}.get(type(value), type(value).__name__)


def _field(obj, name):
    if isinstance(obj, dict):
        return obj.get(name)
    if obj is None:
        return None  # the image is absent (e.g. before on an insert): its fields are null
    raise ExpressionError(f"cannot take field {name!r} of {_kind(obj)}")


def _index(obj, key):
    if isinstance(obj, dict):
        return obj.get(key)
    if isinstance(obj, list):
        if type(key) is not int:
            raise ExpressionError("a list index must be an integer")
        if not -len(obj) <= key < len(obj):
            raise ExpressionError(f"list index {key} out of range")
        return obj[key]
    if obj is None:
        return None
    raise ExpressionError(f"cannot index {_kind(obj)}")


_BINARY = {
    "relation_lt": _compare(lambda x, y: x < y),
    "relation_le": _compare(lambda x, y: x <= y),
    "relation_gt": _compare(lambda x, y: x > y),
    "relation_ge": _compare(lambda x, y: x >= y),
    "relation_eq": _equal,
    "relation_ne": lambda x, y: not _equal(x, y),
    "relation_in": _in,
    "addition_add": _add,
    "addition_sub": _sub,
    "multiplication_mul": _mul,
    "multiplication_div": _div,
    "multiplication_mod": _mod,
}


def _neg(x):
    if isinstance(x, bool) or not isinstance(x, (int, float, Decimal)):
        raise ExpressionError(f"cannot negate {_kind(x)}")
    return _check_int(-x)


# ------------------------------------------------------------------ the compiler (tree -> closures)

_PASS_THROUGH = {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication",
                 "unary", "member", "primary", "paren_expr"}


class _Compiler:
    def __init__(self, columns: list[str] | None, extra: dict[str, Any], functions: dict[str, Callable]):
        self.columns = columns
        self.extra = extra
        self.functions = functions
        self.count = 0
        self.read: set[str] = set()

    def node(self, tree) -> Evaluator:
        self.count += 1
        if self.count > MAX_NODES:
            raise ExpressionError(f"expression too large (more than {MAX_NODES} parts)")
        if not isinstance(tree, lark.Tree):
            raise ExpressionError(f"unexpected token {str(tree)!r}")
        kind = tree.data
        children = tree.children
        handler = getattr(self, "_" + kind, None) if kind not in _PASS_THROUGH else None
        if kind in _PASS_THROUGH:
            return self._pass(kind, children)
        if handler is None:
            raise ExpressionError(f"{kind.replace('_', ' ')} is not supported in rule expressions")
        return handler(children)

    def _pass(self, kind: str, children: list) -> Evaluator:
        real = [c for c in children if c is not None]
        if kind == "expr" and len(real) == 3:  # a ? b : c
            test, yes, no = (self.node(c) for c in real)
            return lambda a, b, e: yes(a, b, e) if _truth(test(a, b, e)) else no(a, b, e)
        if kind == "conditionalor" and len(real) == 2:
            left, right = self.node(real[0]), self.node(real[1])
            return lambda a, b, e: _truth(left(a, b, e)) or _truth(right(a, b, e))
        if kind == "conditionaland" and len(real) == 2:
            left, right = self.node(real[0]), self.node(real[1])
            return lambda a, b, e: _truth(left(a, b, e)) and _truth(right(a, b, e))
        if kind in ("relation", "addition", "multiplication") and len(real) == 2:
            operation_tree, right_tree = real
            operation = _BINARY.get(operation_tree.data)
            if operation is None:
                raise ExpressionError(f"operator {operation_tree.data} is not supported")
            left = self.node(operation_tree.children[0])
            right = self.node(right_tree)
            constant = _constant_of(right_tree)
            if constant is not _NOT_CONSTANT:
                return _with_constant(operation_tree.data, operation, left, constant)
            return lambda a, b, e: operation(left(a, b, e), right(a, b, e))
        if kind == "unary" and len(real) == 2:
            operand = self.node(real[1])
            if real[0].data == "unary_not":
                return lambda a, b, e: not _truth(operand(a, b, e))
            return lambda a, b, e: _neg(operand(a, b, e))
        if len(real) != 1:
            raise ExpressionError(f"unexpected form of {kind}")
        return self.node(real[0])

    def _literal(self, children) -> Evaluator:
        token = children[0]
        kind, text = token.type, token.value
        if kind in ("INT_LIT", "UINT_LIT"):
            digits = text[:-1] if kind == "UINT_LIT" else text
            value: Any = _check_int(int(digits.replace("0x", ""), 16) if "x" in digits else int(digits, 10))
        elif kind == "FLOAT_LIT":
            value = float(text)
        elif kind in ("STRING_LIT", "MLSTRING_LIT"):
            value = str(celstr(token))
        elif kind == "BYTES_LIT":
            value = bytes(celbytes(token))
        elif kind == "BOOL_LIT":
            value = text == "true"
        elif kind == "NULL_LIT":
            value = None
        else:
            raise ExpressionError(f"unsupported literal {text!r}")
        return lambda a, b, e: value

    def _ident(self, children) -> Evaluator:
        name = str(children[0])
        if name in VARIABLES:
            return VARIABLES[name]
        if name in self.extra:
            value = self.extra[name]
            return lambda a, b, e: value
        known = list(VARIABLES) + list(self.extra)
        raise ExpressionError(f"unknown name {name!r}{_suggest(name, known)}; "
                              f"an expression sees {', '.join(VARIABLES)}")

    def _member_dot(self, children) -> Evaluator:
        target_tree, name_token = children
        name = str(name_token)
        self._check_column(target_tree, name)
        image = _image_name(target_tree)
        if image in ("after", "row"):  # the common case, read directly
            return _after_column(name)
        if image == "before":
            return lambda a, b, e: b.get(name) if type(b) is dict else _field(b, name)
        target = self.node(target_tree)
        return lambda a, b, e: _field(target(a, b, e), name)

    def _check_column(self, target_tree, name: str) -> None:
        """after.x / before.x / row.x: x must be a column of the source table (when the table is known)."""
        image = _image_name(target_tree)
        if image is None:
            return
        self.read.add(name)
        if self.columns is not None and name not in self.columns:
            raise ExpressionError(f"{image}.{name}: no column {name!r} in the source table"
                                  f"{_suggest(name, self.columns)}")

    def _member_index(self, children) -> Evaluator:
        target_tree, key_tree = children
        if _image_name(target_tree) is not None and _string_literal(key_tree) is not None:
            self._check_column(target_tree, _string_literal(key_tree))
        target, key = self.node(target_tree), self.node(key_tree)
        return lambda a, b, e: _index(target(a, b, e), key(a, b, e))

    def _member_dot_arg(self, children) -> Evaluator:
        target_tree, name_token = children[0], str(children[1])
        args_tree = children[2] if len(children) > 2 else None
        if name_token in ("exists", "all", "map", "filter", "exists_one"):
            raise ExpressionError(f"the {name_token}() macro is not supported in rule expressions")
        method = METHODS.get(name_token)
        if method is None:
            raise ExpressionError(f"unknown method .{name_token}(){_suggest(name_token, METHODS)}; "
                                  f"methods: {', '.join(sorted(METHODS))}")
        target = self.node(target_tree)
        args = self._args(args_tree)
        return _call(method, name_token, [target] + args)

    def _ident_arg(self, children) -> Evaluator:
        name = str(children[0])
        args_tree = children[1] if len(children) > 1 else None
        if name == "has":
            raise ExpressionError("has() is not needed: a missing column reads as null (after.x == null)")
        function = self.functions.get(name)
        if function is None:
            raise ExpressionError(f"unknown function {name}(){_suggest(name, self.functions)}; "
                                  f"see the function list in the README (Rules)")
        return _call(function, name, self._args(args_tree))

    def _args(self, args_tree) -> list[Evaluator]:
        if args_tree is None:
            return []
        return [self.node(child) for child in args_tree.children if child is not None]

    def _list_lit(self, children) -> Evaluator:
        items = self._args(children[0] if children else None)
        return lambda a, b, e: [item(a, b, e) for item in items]

    def _map_lit(self, children) -> Evaluator:
        parts = self._args(children[0] if children else None)
        pairs = list(zip(parts[::2], parts[1::2]))
        return lambda a, b, e: {k(a, b, e): v(a, b, e) for k, v in pairs}


def _call(function: Callable, name: str, args: list[Evaluator]) -> Evaluator:
    arity = getattr(function, "arity", None)
    if arity is not None and not arity[0] <= len(args) <= arity[1]:
        wanted = str(arity[0]) if arity[0] == arity[1] else f"{arity[0]} to {arity[1]}"
        raise ExpressionError(f"{name}() takes {wanted} argument(s), got {len(args)}")

    # errors raised inside a function surface through Expression.evaluate, naming the expression
    if len(args) == 1:
        (only,) = args
        column = getattr(only, "after_column", None)
        if column is not None:  # f(after.x), the common case: the column is read here, not by another call
            return lambda a, b, e: function(a.get(column) if type(a) is dict else _field(a, column))
        return lambda a, b, e: function(only(a, b, e))
    if len(args) == 2:
        first, second = args
        return lambda a, b, e: function(first(a, b, e), second(a, b, e))
    return lambda a, b, e: function(*[arg(a, b, e) for arg in args])


def _after_column(name: str) -> Evaluator:
    """``after.name``; tagged with ``after_column`` so the node using it can read the column itself."""
    def read(a, b, e):
        return a.get(name) if type(a) is dict else _field(a, name)
    read.after_column = name
    return read


def _with_constant(kind: str, operation: Callable, left: Evaluator, constant) -> Evaluator:
    """``left <op> literal``: the literal is folded in, and ``after.x <op> literal`` reads the column inline."""
    name = getattr(left, "after_column", None)
    if isinstance(constant, str) and kind in ("relation_eq", "relation_ne"):
        # text equality: Python's == is exactly the rule (text never equals another kind)
        if name is None:
            if kind == "relation_eq":
                return lambda a, b, e: left(a, b, e) == constant
            return lambda a, b, e: left(a, b, e) != constant
        if kind == "relation_eq":
            return lambda a, b, e: (a.get(name) if type(a) is dict else _field(a, name)) == constant
        return lambda a, b, e: (a.get(name) if type(a) is dict else _field(a, name)) != constant
    if name is None:
        return lambda a, b, e: operation(left(a, b, e), constant)
    return lambda a, b, e: operation(a.get(name) if type(a) is dict else _field(a, name), constant)


_NOT_CONSTANT = object()


def _constant_of(tree):
    """The value of a literal subtree (a number, text, true/false/null), else _NOT_CONSTANT."""
    while isinstance(tree, lark.Tree) and tree.data != "literal" and len(tree.children) == 1:
        tree = tree.children[0]
    if not (isinstance(tree, lark.Tree) and tree.data == "literal"):
        return _NOT_CONSTANT
    token = tree.children[0]
    if token.type == "STRING_LIT":
        return str(celstr(token))
    if token.type == "INT_LIT" and "x" not in token.value:
        return _check_int(int(token.value))
    if token.type == "FLOAT_LIT":
        return float(token.value)
    if token.type == "BOOL_LIT":
        return token.value == "true"
    return _NOT_CONSTANT


def _image_name(tree) -> str | None:
    """'after' / 'before' / 'row' when ``tree`` is just that variable."""
    while isinstance(tree, lark.Tree) and tree.data in ("member", "primary") and len(tree.children) == 1:
        tree = tree.children[0]
    if isinstance(tree, lark.Tree) and tree.data == "ident" and str(tree.children[0]) in ("after", "before", "row"):
        return str(tree.children[0])
    return None


def _string_literal(tree) -> str | None:
    while isinstance(tree, lark.Tree) and tree.data != "literal" and len(tree.children) == 1:
        tree = tree.children[0]
    if isinstance(tree, lark.Tree) and tree.data == "literal" and tree.children[0].type == "STRING_LIT":
        return str(celstr(tree.children[0]))
    return None
