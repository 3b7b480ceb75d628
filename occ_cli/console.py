"""One shared rich console and the error boundary of every command."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 2) -> None:
    """Print one red error line on stderr and exit with ``code`` (the message is printed as is, no markup)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(' '.join(str(message).split()))}", highlight=False,
                      soft_wrap=True)
    raise SystemExit(code)


_shown_warnings: set[str] = set()
_python_showwarning = warnings.showwarning


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """occ's own warnings (OccWarning) as one yellow 'warning:' line, each distinct one once per process;
    other warnings as Python prints them."""
    from occ_core.errors import OccWarning

    if isinstance(category, type) and issubclass(category, OccWarning):
        text = " ".join(str(message).split())
        if text not in _shown_warnings:
            _shown_warnings.add(text)
            from rich.markup import escape

            err_console.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)
        return
    _python_showwarning(message, category, filename, lineno, file, line)


def install_warning_printer() -> None:
    """Route OccWarnings through :func:`_show_warning` (idempotent)."""
    if warnings.showwarning is not _show_warning:
        warnings.showwarning = _show_warning


def user_errors(func: F) -> F:
    """Turn user errors (OccError, OS errors on the user's files, Ctrl-C) into one line and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from occ_core.errors import OccError

        install_warning_printer()
        try:
            return func(*args, **kwargs)
        except OccError as e:
            fail(str(e), e.exit_code)
        except OSError as e:
            # FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError, disk full, ...
            # about a file: the user's problem. An OSError naming no file is a bug: keep the traceback.
            where = getattr(e, "filename", None)
            if where is None:
                raise
            fail(f"{where}: {e.strerror or e}")
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f"}


def usage_error_line(e: Exception, path: str = "occ") -> str:
    """One line for a command-line usage error of typer/click (unknown option or command, missing option,
    missing value, a value of the wrong type, an extra argument): ``occ train: no such option: --bogus
    (did you mean --out?); see 'occ train --help'``. Works from the exception's attributes only, so it does
    not depend on which click (typer's vendored copy or the click package) raised it. ``path``: the command
    path to name when the error carries no context (a missing option value is raised by the parser)."""
    import re

    ctx = getattr(e, "ctx", None)
    where = getattr(ctx, "command_path", None) or path
    option = getattr(e, "option_name", None)
    if option is not None and isinstance(getattr(e, "message", None), str):  # NoSuchOption
        text = e.message.rstrip(".")
        maybe = sorted(getattr(e, "possibilities", None) or [])
        if maybe:
            text += f" (did you mean {' or '.join(maybe)}?)"
    else:
        text = " ".join(str(e.format_message()).split()).rstrip(".")  # type: ignore[attr-defined]
        errors = getattr(getattr(e, "__cause__", None), "errors", None)  # typer >= 0.2x: a pydantic ValidationError
        if callable(errors):
            try:
                value = errors()[0].get("input")
            except Exception:  # pragma: no cover - another pydantic layout: the message alone
                value = None
            if isinstance(value, str) and repr(value) not in text:
                # typer's pydantic wording "Input should be a valid integer, unable to parse string as an integer"
                short = re.sub(r"Input should be (.*?)(, unable to parse .*)?$", r"expected \1", text)
                text = f"{short}, got {value!r}" if short != text else f"{text} (got {value!r})"
        extra = re.search(r"unexpected extra arguments?(?:\(s\))? \((.*)\)$", text)
        if extra and extra.group(1).split() and all(w.lower() in BOOL_WORDS for w in extra.group(1).split()):
            text += ": boolean options are plain flags (such as --force / --no-force) and take no value"
    text = text[:1].lower() + text[1:]
    help_hint = ""
    if ctx is None or ctx.command.get_help_option(ctx) is not None:
        help_hint = f"; see '{where} {ctx.help_option_names[0] if ctx is not None else '--help'}'"
    return f"{where}: {text}{help_hint}"


def parse_list(value: str | None) -> list[str] | None:
    """Parse a comma-separated option such as ``--sequences 00,08`` (None stays None)."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items


def plain_flags() -> None:
    """Boolean flags are shown as plain flags in --help (``--force / --no-force``), without a ``<bool>``
    value column: typer prints the type of every option, flags included; flags take no value."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - another typer layout: leave its help as it is
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_occ_plain_flags", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._occ_plain_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich
