"""One shared rich console and the error boundary of every command."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 2) -> None:
    """Print one red error line on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def user_errors(func: F) -> F:
    """Turn user errors (OccError, missing files, Ctrl-C) into one line and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from occ_core.errors import OccError

        try:
            return func(*args, **kwargs)
        except OccError as e:
            fail(str(e), e.exit_code)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
            where = getattr(e, "filename", None)
            fail(f"{where}: {e.strerror}" if where else str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


def parse_list(value: str | None) -> list[str] | None:
    """Parse a comma-separated option such as ``--sequences 00,08`` (None stays None)."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items
