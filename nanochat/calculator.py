"""
The calculator tool: the model writes an expression between <|python_start|> and <|python_end|>,
the engine evaluates it here and forces the result into the stream.

The text comes from a model, so it is never handed to eval(). It is parsed with `ast` and walked
by a small evaluator that knows numbers, + - * / // % **, unary + and -, and parentheses, and
nothing else: no names, calls, attributes, subscripts, strings or builtins. Work is bounded:
the expression's length and size, the digits of every intermediate integer (so 9**9**9 or a long
chain of products is refused before it is computed), and a wall-clock deadline checked at every
step.

    calculate("23 + 45")   -> "68"
    calculate("7 / 2")     -> "3.5"
    calculate("__import__('os')")  raises CalculatorError
"""
import ast
import math
import operator
import time

MAX_CHARS = 200          # longer "expressions" are not arithmetic a chat model should write
MAX_NODES = 100          # operators + numbers in one expression
MAX_DIGITS = 100         # the largest integer any step may produce
MAX_EXPONENT = 1000      # |b| in a ** b
TIME_LIMIT = 0.1         # seconds


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, too big, or failed (division by zero, ...)."""


_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _digits(x):
    """Decimal digits of an integer's magnitude, cheaply (bit_length never converts to a string)."""
    return int(abs(x).bit_length() * math.log10(2)) + 1


def _check_size(x):
    if isinstance(x, int) and _digits(x) > MAX_DIGITS:
        raise CalculatorError(f"result has more than {MAX_DIGITS} digits")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalculatorError("result is not a finite number")
    return x


def _power(a, b):
    if abs(b) > MAX_EXPONENT:
        raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        # estimate the size of the result before computing it
        if _digits(a) * b > MAX_DIGITS + b:
            raise CalculatorError(f"result has more than {MAX_DIGITS} digits")
    try:
        result = a ** b
    except OverflowError:
        raise CalculatorError("result too large") from None
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    if isinstance(result, complex):
        raise CalculatorError("result is not a real number")
    return result


def _evaluate(node, deadline):
    if time.monotonic() > deadline:
        raise CalculatorError("took too long")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, deadline)
    if isinstance(node, ast.Constant):
        # bool is an int subclass; True + True is not arithmetic anyone meant
        if type(node.value) in (int, float):
            return _check_size(node.value)
        raise CalculatorError("only numbers are allowed")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, deadline))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        a = _evaluate(node.left, deadline)
        b = _evaluate(node.right, deadline)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(a, b))
        if isinstance(node.op, ast.Mult) and isinstance(a, int) and isinstance(b, int) and a and b:
            if _digits(a) + _digits(b) > MAX_DIGITS + 1:
                raise CalculatorError(f"result has more than {MAX_DIGITS} digits")
        try:
            return _check_size(_BINARY[type(node.op)](a, b))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
    raise CalculatorError(f"{type(node).__name__} is not allowed: only numbers, + - * / // % ** and parentheses")


def format_number(x):
    """Integers as they are; floats with up to 12 significant digits, and 5.0 as 5."""
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{x:.12g}"
    return str(x)


def calculate(expr, time_limit=TIME_LIMIT):
    """Evaluate an arithmetic expression; returns the result as a string or raises CalculatorError."""
    if not isinstance(expr, str):
        raise CalculatorError("expression must be a string")
    # the model may write "1,234" or "12 × 3": accept the common spellings of plain arithmetic
    expr = expr.strip().replace(",", "").replace("×", "*").replace("÷", "/")
    if not expr:
        raise CalculatorError("empty expression")
    if len(expr) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("not a valid expression") from None
    if sum(1 for _ in ast.walk(tree)) > 3 * MAX_NODES:  # each operator is ~2 ast nodes
        raise CalculatorError("expression too long")
    try:
        return format_number(_evaluate(tree, time.monotonic() + time_limit))
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None


def use_calculator(expr):
    """The tool as the engine calls it: the result string, or None when the expression is refused."""
    try:
        return calculate(expr)
    except CalculatorError:
        return None
