"""The `tokenomy` command line: one module per subcommand. Only here do errors become
`Error: ...` and exit code 1; the library raises."""

from __future__ import annotations

import click

from tokenomy.errors import TokenomyError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TokenomyError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenomy")
def cli() -> None:
    """Cut the cost of running LLMs: plan the hardware, compress the model, prove the
    quality, serve it with the meter running."""


def commands() -> click.Group:
    """The full command tree (subcommands imported here, not at `import tokenomy`)."""
    from tokenomy.cli.bench import bench
    from tokenomy.cli.calibrate import calibrate
    from tokenomy.cli.catalog import catalog
    from tokenomy.cli.compress import compress
    from tokenomy.cli.distill import distill
    from tokenomy.cli.eval import eval_
    from tokenomy.cli.optimize import optimize, report
    from tokenomy.cli.plan import plan
    from tokenomy.cli.review import review
    from tokenomy.cli.route import route
    from tokenomy.cli.sensitivity import sensitivity
    from tokenomy.cli.serve import keys, serve, usage

    for command in (plan, catalog, compress, eval_, optimize, report, serve, keys, usage,
                    bench, route, calibrate, review, distill, sensitivity):
        cli.add_command(command)
    return cli


def main() -> None:
    import os
    import sys

    if not sys.stdout.isatty():  # a log or a pipe: tables at full width, not rich's 80
        os.environ.setdefault("COLUMNS", "200")
    commands()()
