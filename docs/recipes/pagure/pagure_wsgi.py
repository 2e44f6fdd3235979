# /etc/pagure/pagure_wsgi.py: Pagure's WSGI entry point, its request hooks kept off
# the registry's routes (no session, cookie, CSP header nor gc.collect() on a pull).
import functools
import os

import flask

os.environ.setdefault("PAGURE_CONFIG", "/etc/pagure/pagure.cfg")

from pagure.flask_app import create_app  # noqa: E402

from flask_dependency_proxy import is_registry_request  # noqa: E402


def _off_registry(hook):
    @functools.wraps(hook)
    def wrapper(*args):
        if is_registry_request():
            return args[0] if args else None  # an after_request hook hands the response on
        return hook(*args)

    return wrapper


application = create_app()
for hooks in (
    application.before_request_funcs,
    application.after_request_funcs,
    application.teardown_request_funcs,
):
    hooks[None] = [
        _off_registry(hook) if hook.__module__.startswith("pagure.") else hook
        for hook in hooks.get(None, [])
    ]


@application.teardown_request
def _close_registry_session(exc):
    """Pagure's end_request is skipped there: close the session the adapter opened."""
    if is_registry_request() and flask.g.get("session"):
        flask.g.pop("session").remove()
