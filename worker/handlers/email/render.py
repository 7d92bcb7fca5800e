"""Rendering `email.send` templates within limits.

Templates are written by whoever submits a batch, so they run in Jinja2's
`SandboxedEnvironment` (no attribute access to Python internals, no file loader), and a
render may use only so much: time, output, loop iterations, integer size and string
length (`RenderLimits`, the worker's settings). The handler renders off the event loop,
in processes of its own (build.py), so a template that runs to its limit delays
nothing else; the limits make every render end soon, from inside the render:

- every `{% for %}` iterates through a guard (the parsed template is rewritten) that
  counts iterations and checks the deadline;
- `range` is a guarded one, counting the same way;
- `+`, `*`, `**`, `//` and `%` go through `call_binop`, which refuses, before computing
  it, a power or a product whose result would exceed the integer limit, a string or list
  longer than the output limit, and checks the deadline;
- the output is produced piece by piece (`generate`), counted and timed.

What remains uninterruptible is one filter call on a string the limits allowed
(`center`, `replace`): bounded by them.

`StrictUndefined` turns a variable missing from `vars` into an error naming it instead
of an empty string in 50,000 mailboxes. Only the HTML part is autoescaped. A batch
usually shares one template among its items, so compiled templates are kept in an LRU
keyed by their source: compiling costs far more than rendering.

Most templates only substitute variables. `is_bounded` tells them apart from the parsed
template: no loops, calls, operators, macros or blocks, only filters and tests that take
time linear in their input. Such a template does work in proportion to its own size, the
item's variables and the output limit, whatever the variables hold; its compiled code
(`Templates.bounded_code`) may be `adopt`ed by a `Templates` that never compiles.
"""

from __future__ import annotations

import functools
import marshal
import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["RenderLimitExceeded", "RenderLimits", "TemplateError", "Templates", "is_bounded"]


class TemplateError(ValueError):
    """A template failed: syntax, a missing variable, a sandbox refusal, an error."""


class RenderLimitExceeded(TemplateError):
    """A render went past one of `RenderLimits`: the message names the setting."""


@dataclass(frozen=True)
class RenderLimits:
    """Per render of one template (subject, text or html)."""

    seconds: float = 1.0  # BATCHD_EMAIL_RENDER_TIMEOUT
    output_chars: int = 1024 * 1024  # BATCHD_EMAIL_RENDER_MAX_OUTPUT; strings and lists too
    loop_iterations: int = 10_000  # BATCHD_EMAIL_RENDER_MAX_LOOP, all loops of a render
    max_int: int = 10**18  # BATCHD_EMAIL_RENDER_MAX_INT, in absolute value


class _Budget:
    """What one render has left; a render runs in one thread, so one budget per thread."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.iterations = 0

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.loop_iterations:
            raise RenderLimitExceeded(
                f"more than {self.limits.loop_iterations} loop iterations "
                "(BATCHD_EMAIL_RENDER_MAX_LOOP)"
            )
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(
                f"took longer than {self.limits.seconds:g} s (BATCHD_EMAIL_RENDER_TIMEOUT)"
            )


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "*": operator.mul,
    "**": operator.pow,
    "//": operator.floordiv,
    "%": operator.mod,
}


class _LimitedEnvironment(SandboxedEnvironment):
    intercepted_binops = frozenset(_OPERATORS)

    def __init__(self, local: threading.local, *, autoescape: bool) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=autoescape)
        self._local = local
        self.globals["range"] = self.guarded_range

    @property
    def budget(self) -> _Budget:
        budget: _Budget | None = getattr(self._local, "budget", None)
        if budget is None:
            raise RuntimeError("an email template rendered outside Templates.render")
        return budget

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        template = super()._parse(source, name, filename)
        for loop in template.find_all(nodes.For):
            guard = nodes.EnvironmentAttribute("loop_guard", lineno=loop.lineno)
            loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.lineno)
        return template

    def loop_guard(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = self.budget
        for item in iterable:
            budget.tick()
            yield item

    def guarded_range(self, *args: int) -> Iterator[int]:
        return self.loop_guard(range(*args))

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        budget = self.budget
        budget.check_time()
        limits = budget.limits
        _check_operands(op, left, right, limits)
        result = _OPERATORS[op](left, right)
        if isinstance(result, int) and abs(result) > limits.max_int:
            raise RenderLimitExceeded(_int_message(limits))
        if isinstance(result, str | list | tuple) and len(result) > limits.output_chars:
            raise RenderLimitExceeded(_length_message(limits))
        return result


def _check_operands(op: str, left: Any, right: Any, limits: RenderLimits) -> None:
    """Refuses what would be too big before it is computed: `9 ** 2000000` and
    `'x' * 100000000` cost time and memory to compute, not only to keep."""
    if isinstance(left, bool) or isinstance(right, bool):
        return
    ints = isinstance(left, int) and isinstance(right, int)
    bits = limits.max_int.bit_length()
    # |left| >= 2 ** (bit_length - 1): the power has at least that many bits times right.
    if op == "**" and ints and right > 0 and (abs(left).bit_length() - 1) * right > bits:
        raise RenderLimitExceeded(_int_message(limits))
    if op == "*" and ints and left.bit_length() + right.bit_length() > 2 * bits:
        raise RenderLimitExceeded(_int_message(limits))
    if op == "*":
        for sequence, count in ((left, right), (right, left)):
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(count, int)
                and len(sequence) * count > limits.output_chars
            ):
                raise RenderLimitExceeded(_length_message(limits))


def _int_message(limits: RenderLimits) -> str:
    return f"an integer beyond {limits.max_int} (BATCHD_EMAIL_RENDER_MAX_INT)"


def _length_message(limits: RenderLimits) -> str:
    return f"a string or list longer than {limits.output_chars} (BATCHD_EMAIL_RENDER_MAX_OUTPUT)"


# What a bounded template may contain. Left out: loops, calls, macros, blocks, `set`,
# every operator (`~`, `+` and `*` make strings longer than their operands), literals
# of lists and dicts, slices, `in` (a substring search), other filters and tests.
_BOUNDED_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Const,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.If,
    nodes.CondExpr,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Compare,
    nodes.Operand,
    nodes.Filter,
    nodes.Test,
    nodes.Keyword,
)
_LINEAR_FILTERS = frozenset(
    {"default", "d", "e", "escape", "safe", "string", "lower", "upper", "title"}
    | {"capitalize", "length", "count"}
)
_LINEAR_TESTS = frozenset(
    {"defined", "undefined", "none", "true", "false", "boolean", "number", "integer"}
    | {"float", "string", "mapping", "sequence", "even", "odd", "eq", "ne", "lower", "upper"}
)


def is_bounded(template: nodes.Template) -> bool:
    """Whether a parsed template can only do work linear in its size and its input."""
    for node in template.find_all(nodes.Node):
        if not isinstance(node, _BOUNDED_NODES):
            return False
        if isinstance(node, nodes.Filter) and node.name not in _LINEAR_FILTERS:
            return False
        if isinstance(node, nodes.Test) and node.name not in _LINEAR_TESTS:
            return False
        if isinstance(node, nodes.Operand) and node.op in ("in", "notin"):
            return False
    return True


@dataclass(frozen=True)
class _Compiled:
    template: jinja2.Template
    bounded_code: bytes | None  # marshalled, when `is_bounded`


class Templates:
    """Compiles and renders the subject, text and HTML templates of items, within
    `limits`. Thread-safe.

    `compiles=False` makes one that renders only the bounded templates it adopted
    (`adopt`), never parsing a source itself."""

    def __init__(
        self, limits: RenderLimits | None = None, cache_size: int = 256, *, compiles: bool = True
    ) -> None:
        self.limits = limits or RenderLimits()
        self._local = threading.local()
        plain = _LimitedEnvironment(self._local, autoescape=False)
        html = _LimitedEnvironment(self._local, autoescape=True)
        self._environments = {"subject": plain, "text": plain, "html": html}
        self._compile: dict[str, Callable[[str], _Compiled]] | None = None
        if compiles:
            self._compile = {
                part: functools.lru_cache(maxsize=cache_size)(functools.partial(_compile, env))
                for part, env in self._environments.items()
            }
        self._cache_size = cache_size
        self._adopted: dict[str, OrderedDict[str, jinja2.Template]] = {
            part: OrderedDict() for part in self._environments
        }
        self._adopting = threading.Lock()

    def bounded_code(self, part: str, source: str) -> bytes | None:
        """The compiled code of a template `is_bounded` approves, for `adopt`; None for
        any other (or one that does not compile)."""
        if self._compile is None:
            return None
        try:
            return self._compile[part](source).bounded_code
        except Exception:
            return None

    def adopt(self, part: str, source: str, code: bytes) -> None:
        """Renders `source` from now on with `code`, from another Templates'
        `bounded_code` for it (same limits, same Jinja2)."""
        env = self._environments[part]
        template = env.template_class.from_code(env, marshal.loads(code), env.make_globals(None))
        with self._adopting:
            adopted = self._adopted[part]
            adopted[source] = template
            while len(adopted) > self._cache_size:
                adopted.popitem(last=False)

    def adopted(self, part: str, source: str) -> bool:
        return source in self._adopted[part]

    def render(self, part: str, source: str, variables: Mapping[str, Any]) -> str:
        """`part` is subject, text or html; TemplateError names the part and the cause."""
        budget = self._local.budget = _Budget(self.limits)
        try:
            pieces: list[str] = []
            size = 0
            for piece in self._template(part, source).generate(variables):
                size += len(piece)
                if size > self.limits.output_chars:
                    raise RenderLimitExceeded(
                        f"output longer than {self.limits.output_chars} characters "
                        "(BATCHD_EMAIL_RENDER_MAX_OUTPUT)"
                    )
                budget.check_time()
                pieces.append(piece)
            return "".join(pieces)
        except RenderLimitExceeded as exc:
            raise RenderLimitExceeded(f"{part} template: {exc}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{part} template, line {exc.lineno}: {exc.message}") from exc
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{part} template: {exc.message}") from exc
        except jinja2.TemplateError as exc:  # SecurityError and the like
            raise TemplateError(f"{part} template: {exc}") from exc
        except Exception as exc:  # a template may divide by zero or call a filter badly
            raise TemplateError(f"{part} template: {type(exc).__name__}: {exc}") from exc
        finally:
            self._local.budget = None

    def _template(self, part: str, source: str) -> jinja2.Template:
        adopted = self._adopted[part].get(source)
        if adopted is not None:
            return adopted
        if self._compile is None:
            raise RuntimeError(f"the {part} template was not adopted and is not compiled here")
        return self._compile[part](source).template


def _compile(env: _LimitedEnvironment, source: str) -> _Compiled:
    tree = env.parse(source)
    code = env.compile(tree)
    template = env.template_class.from_code(env, code, env.make_globals(None))
    return _Compiled(template, marshal.dumps(code) if is_bounded(tree) else None)
