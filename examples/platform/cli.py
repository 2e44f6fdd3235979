"""Operator commands, run from the repository root as ``flask --app examples.platform ...``.

::

    init-db
    user create NAME --password P [--admin]
    user block NAME
    group create FULL_PATH [--private]
    group add-member FULL_PATH USER --role ROLE
    token create USER --scopes read_registry,write_registry [--expires-days N] [--name NAME]
    token revoke TOKEN_ID
    deploy-token create GROUP --scopes read_registry,write_registry [--expires-days N]
        [--name NAME] [--username NAME]
    deploy-token revoke ID
    project create GROUP/NAME
    ci run GROUP/PROJECT --user USER -- COMMAND [ARGS...]

Commands that create a secret print it alone on their last line, so scripts can
take it with ``| tail -n 1``.
"""

from __future__ import annotations

import os
import subprocess
import typing as t
from collections.abc import Callable
from urllib.parse import urlsplit

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from flask_dependency_proxy import ci_variables

from . import services
from .extensions import proxy
from .models import CiJob, Role, db, find_project

F = t.TypeVar("F", bound=Callable[..., t.Any])

#: Where CI jobs reach the platform when ``DEPENDENCY_PROXY_EXTERNAL_URL`` is unset.
DEFAULT_EXTERNAL_URL = "http://localhost:5000"


def _refusals_as_errors(f: F) -> F:
    """Show a :class:`services.PlatformError` as ``Error: ...`` with exit status 1."""

    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        try:
            return f(*args, **kwargs)
        except services.PlatformError as e:
            raise click.ClickException(str(e)) from None

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return t.cast(F, wrapper)


def _expiry_note(expires_at: t.Any) -> str:
    return f"expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else "never expires"


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the platform's tables and the Dependency Proxy's (safe to repeat)."""
    db.create_all()
    proxy.create_all()
    click.echo("Database ready.")


user_cli = AppGroup("user", help="Manage users.")


@user_cli.command("create")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--admin", is_flag=True, help="Admins read and administer every group.")
@_refusals_as_errors
def create_user(name: str, password: str, admin: bool) -> None:
    """Create a user who signs in with NAME and the password."""
    user = services.create_user(name, password, is_admin=admin)
    click.echo(f"Created {'admin ' if admin else ''}user {user.username} (id {user.id}).")


@user_cli.command("block")
@click.argument("name")
@_refusals_as_errors
def block_user(name: str) -> None:
    """Block a user: password, tokens, sessions and running CI jobs stop working."""
    services.block_user(name)
    click.echo(f"Blocked user {name}.")


group_cli = AppGroup("group", help="Manage groups and their members.")


@group_cli.command("create")
@click.argument("full_path")
@click.option("--private", is_flag=True, help="Hide the group's page from non-members.")
@_refusals_as_errors
def create_group(full_path: str, private: bool) -> None:
    """Create a group at FULL_PATH; for a subgroup, the parent must exist.

    A subgroup of a private group is always private.
    """
    group = services.create_group(full_path, private=private)
    visibility = "private" if group.private else "public"
    click.echo(f"Created {visibility} group {group.full_path} (id {group.id}).")


@group_cli.command("delete")
@click.argument("full_path")
@_refusals_as_errors
def delete_group(full_path: str) -> None:
    """Delete the group at FULL_PATH (no subgroups or projects) and its proxy data."""
    group_id = services.delete_group(full_path)
    click.echo(f"Deleted group {full_path} (id {group_id}) and its dependency proxy data.")


@group_cli.command("add-member")
@click.argument("full_path")
@click.argument("username")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.name.lower() for r in Role], case_sensitive=False),
    help="The role also applies in every subgroup.",
)
@_refusals_as_errors
def add_member(full_path: str, username: str, role: str) -> None:
    """Give USERNAME a role in the group at FULL_PATH (or change it)."""
    membership = services.add_member(full_path, username, role)
    click.echo(f"{username} is {membership.role_name} of {membership.group.full_path}.")


token_cli = AppGroup("token", help="Manage personal access tokens.")


@token_cli.command("create")
@click.argument("username")
@click.option("--scopes", required=True, help="Comma-separated, e.g. read_registry,write_registry.")
@click.option("--expires-days", type=int, default=None)
@click.option("--name", default="command line", show_default=True)
@_refusals_as_errors
def create_token(username: str, scopes: str, expires_days: int | None, name: str) -> None:
    """Create a personal access token for USERNAME; the token is the last line."""
    user = services.require_user(username)
    token, secret = services.create_personal_access_token(
        user, name=name, scopes=scopes, expires_days=expires_days
    )
    click.echo(
        f"Created personal access token {token.id} ({token.name!r}) for {user.username},"
        f" scopes {token.scopes}, {_expiry_note(token.expires_at)}. It is shown only once:"
    )
    click.echo(secret)


@token_cli.command("revoke")
@click.argument("token_id", type=int)
@_refusals_as_errors
def revoke_token(token_id: int) -> None:
    """Revoke the personal access token with this id."""
    services.revoke_personal_access_token(token_id)
    click.echo(f"Revoked personal access token {token_id}.")


deploy_token_cli = AppGroup("deploy-token", help="Manage group deploy tokens.")


@deploy_token_cli.command("create")
@click.argument("group_path")
@click.option("--scopes", required=True, help="Comma-separated, e.g. read_registry,write_registry.")
@click.option("--expires-days", type=int, default=None)
@click.option("--name", default=None)
@click.option("--username", default=None, help="Default: deploy-token-<id>.")
@_refusals_as_errors
def create_deploy_token(
    group_path: str,
    scopes: str,
    expires_days: int | None,
    name: str | None,
    username: str | None,
) -> None:
    """Create a deploy token for a group; the last line is ``USERNAME TOKEN``."""
    group = services.require_group(group_path)
    token, secret = services.create_deploy_token(
        group, scopes=scopes, name=name, username=username, expires_days=expires_days
    )
    click.echo(
        f"Created deploy token {token.id} for {group.full_path}, scopes {token.scopes},"
        f" {_expiry_note(token.expires_at)}. It is shown only once:"
    )
    click.echo(f"{token.username} {secret}")


@deploy_token_cli.command("revoke")
@click.argument("token_id", type=int)
@_refusals_as_errors
def revoke_deploy_token(token_id: int) -> None:
    """Revoke the deploy token with this id."""
    services.revoke_deploy_token(token_id)
    click.echo(f"Revoked deploy token {token_id}.")


project_cli = AppGroup("project", help="Manage projects.")


@project_cli.command("create")
@click.argument("full_path")
@_refusals_as_errors
def create_project(full_path: str) -> None:
    """Create a project at GROUP/NAME."""
    project = services.create_project(full_path)
    click.echo(f"Created project {project.full_path} (id {project.id}).")


@project_cli.command("set-ci-file")
@click.argument("full_path")
@click.argument("ci_file", type=click.File("r"))
@_refusals_as_errors
def set_ci_file(full_path: str, ci_file: t.TextIO) -> None:
    """Store CI_FILE (a .gitlab-ci.yml) as the CI definition of the project GROUP/NAME."""
    project = services.set_ci_file(full_path, ci_file.read())
    click.echo(f"Stored the CI file of {project.full_path}.")


ci_cli = AppGroup("ci", help="Run CI jobs.")


def _server_host_port(external_url: str) -> tuple[str, int]:
    parts = urlsplit(external_url)
    if not parts.hostname:
        raise click.ClickException(f"DEPENDENCY_PROXY_EXTERNAL_URL {external_url!r} has no host.")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


@ci_cli.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("project_path")
@click.option("--user", "username", required=True, help="The user the job runs as.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@_refusals_as_errors
def run_job(ctx: click.Context, project_path: str, username: str, command: tuple[str, ...]) -> None:
    """Run COMMAND as a CI job of GROUP/PROJECT, with the job's CI_* variables.

    The job token works while COMMAND runs and stops working when it exits,
    however it exits. The exit status is COMMAND's.
    """
    project = find_project(project_path)
    if project is None:
        raise click.ClickException(f"No project at {project_path!r}.")
    user = services.require_user(username)
    external_url = current_app.config.get("DEPENDENCY_PROXY_EXTERNAL_URL") or DEFAULT_EXTERNAL_URL
    host, port = _server_host_port(external_url)

    job, secret = services.start_job(project, user)
    job_id = job.id
    env = {
        **os.environ,
        **ci_variables(
            external_url=external_url,
            project_group_path=project.group.full_path,
            job_token=secret,
            username=services.job_token_username(),
        ),
        "CI": "true",
        "CI_JOB_ID": str(job_id),
        "CI_JOB_TOKEN": secret,
        "CI_PROJECT_PATH": project.full_path,
        "CI_SERVER_HOST": host,
        "CI_SERVER_PORT": str(port),
        "CI_SERVER_URL": external_url.rstrip("/"),
    }
    # Hold no database connection (or SQLite lock) while the job runs.
    db.session.close()
    click.echo(
        f"Running job {job_id} of {project_path} as {username}: {' '.join(command)}", err=True
    )
    try:
        status = _run(command, env)
    finally:
        finished = db.session.get(CiJob, job_id)
        if finished is not None:
            services.finish_job(finished)
    click.echo(f"Job {job_id} finished with status {status}.", err=True)
    ctx.exit(status)


def _run(command: tuple[str, ...], env: dict[str, str]) -> int:
    """Run the job's command with the terminal's stdout and stderr; return a shell-style status."""
    try:
        completed = subprocess.run(command, env=env, check=False)
    except FileNotFoundError:
        click.echo(f"Error: command not found: {command[0]}", err=True)
        return 127
    except PermissionError:
        click.echo(f"Error: permission denied: {command[0]}", err=True)
        return 126
    # A negative code means the command died from a signal; report it as a shell would.
    return completed.returncode if completed.returncode >= 0 else 128 - completed.returncode


def init_app(app: Flask) -> None:
    app.cli.add_command(init_db_command)
    for group in (user_cli, group_cli, token_cli, deploy_token_cli, project_cli, ci_cli):
        app.cli.add_command(group)
