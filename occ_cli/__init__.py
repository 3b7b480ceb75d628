"""The `occ` command line: thin typer commands that parse options, call one core function and print."""
