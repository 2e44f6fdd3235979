"""The forge's operator commands (``flask --app examples.forge ...``).

Each runs in :func:`.hooks.outside_request`, the same ``g.session`` the extension's own
commands get, so ``group delete`` can call the extension's ``forget_group`` on it.
"""

from __future__ import annotations

import functools
import typing as t

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from flask_dependency_proxy import migrations

from . import models, services
from .hooks import outside_request

user_cli = AppGroup("user", help="Users of the forge.")
group_cli = AppGroup("group", help="Groups of the forge.")
token_cli = AppGroup("token", help="API tokens.")

P = t.ParamSpec("P")


def init_app(app: Flask) -> None:
    app.cli.add_command(init_db)
    for command in (user_cli, group_cli, token_cli):
        app.cli.add_command(command)


def in_session(command: t.Callable[P, None]) -> t.Callable[P, None]:
    """Run the command with ``g.session`` open; a refused operation is a clean error."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        with outside_request():
            try:
                command(*args, **kwargs)
            except services.ForgeError as error:
                raise click.ClickException(str(error)) from None

    return wrapper


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create the forge's tables and the extension's (its migrations), or upgrade them."""
    engine = current_app.extensions[services.ENGINE]
    models.Base.metadata.create_all(engine)
    migrations.upgrade(engine=engine)
    click.echo("Database ready.")


@user_cli.command("create")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True)
@in_session
def create_user(username: str, password: str) -> None:
    user = services.create_user(username, password)
    click.echo(f"User {user.username} created (id {user.id}).")


@user_cli.command("block")
@click.argument("username")
@click.option("--unblock", is_flag=True, help="Let the user in again.")
@in_session
def block_user(username: str, unblock: bool) -> None:
    services.set_blocked(username, not unblock)
    click.echo(f"User {username} {'unblocked' if unblock else 'blocked'}.")


@group_cli.command("create")
@click.argument("name")
@click.option("--owner", required=True, help="The user who administers the group.")
@in_session
def create_group(name: str, owner: str) -> None:
    group = services.create_group(name, owner)
    click.echo(f"Group {group.name} created (id {group.id}).")


@group_cli.command("add-member")
@click.argument("name")
@click.argument("username")
@in_session
def add_member(name: str, username: str) -> None:
    group = services.add_member(name, username)
    click.echo(f"{username} is a member of {group.name}.")


@group_cli.command("delete")
@click.argument("name")
@in_session
def delete_group(name: str) -> None:
    group_id = services.delete_group(name)
    click.echo(f"Group {name} deleted (id {group_id}); the Dependency Proxy forgot it.")


@token_cli.command("create")
@click.argument("username")
@click.option(
    "--acl",
    "acls",
    multiple=True,
    type=click.Choice(models.ACLS),
    default=[models.PULL_ACL],
    show_default=True,
)
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 365))
@in_session
def create_token(username: str, acls: tuple[str, ...], days: int) -> None:
    """Print a new API token of USERNAME on the last line (it is not shown again)."""
    token, secret = services.create_token(username, list(acls), days)
    expires = f"{token.expires_at:%Y-%m-%d}"
    click.echo(f"API token {token.id} of {username} ({token.acls}), expires {expires}:")
    click.echo(secret)
