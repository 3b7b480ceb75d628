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
