"""Gunicorn settings for serving the platform with the dependency proxy in production.

    gunicorn -c examples/gunicorn.conf.py -b 127.0.0.1:8000 'examples.platform:create_app()'

Why gevent: a pull is mostly waiting (on upstream, on a slow client, on an idle
keep-alive connection). With the ``gevent`` worker class every connection is a
greenlet of a few KiB, so thousands of slow or idle clients cost little and never take
a thread another client needs; the ``gthread`` model gives each connection a thread
and stops answering everyone once a handful of clients hold them
(``benchmarks/README.md``, "Slow and idle clients"). psycopg 3 cooperates with gevent
once gevent has patched ``select`` (gunicorn patches before the app is imported, so
keep ``preload_app`` off); ``requests`` uses the patched sockets; SQLite calls are
short and block their worker while they run, which is fine for a demo and why
production uses PostgreSQL.

Every value can be overridden on the command line (``-w 8``) or through
``GUNICORN_CMD_ARGS``; ``WEB_CONCURRENCY`` sets the number of workers.
"""

import importlib.util
import multiprocessing
import os

worker_class = "gevent"
#: One worker per core: a gevent worker is single-threaded and CPU-bound only while it
#: hashes a blob miss or renders a page.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
#: Connections one worker holds at once (idle keep-alive ones included). Each is a
#: greenlet and a socket; past this, new connections wait in the listen backlog.
worker_connections = 4000
backlog = 4096

#: A connection must send a complete request head within this many seconds (the first
#: request and every keep-alive one after it), so idle and slowloris connections are
#: closed instead of held.
keepalive = 15
#: A worker whose event loop is blocked this long is restarted. Transfers do not count:
#: the loop keeps running while greenlets stream.
timeout = 60
graceful_timeout = 30

#: Never import the app in the master: gevent must patch before psycopg is imported.
preload_app = False

accesslog = "-"
#: key=value, one line per request, with the duration in microseconds and the bytes sent.
access_log_format = (
    'remote=%(h)s method=%(m)s path="%(U)s" status=%(s)s bytes=%(B)s'
    ' duration_us=%(D)s agent="%(a)s"'
)
errorlog = "-"
#: No control socket at a fixed per-user path: several platforms may run on one machine.
control_socket_disable = True
#: Which forwarded headers count is the app's decision alone
#: (``DEPENDENCY_PROXY_TRUSTED_PROXIES``): gunicorn would otherwise take the scheme from
#: ``X-Forwarded-Proto`` on every connection from 127.0.0.1, trusted or not.
secure_scheme_headers: dict[str, str] = {}
forwarded_allow_ips = ""

#: The extension's loggers at INFO on stderr: warnings about upstreams and the database,
#: and one line per registry request (``flask_dependency_proxy.requests``, see
#: ``DEPENDENCY_PROXY_REQUEST_LOG``); other libraries' warnings only.
logconfig_dict = {
    "root": {"level": "WARNING", "handlers": ["error_console"]},
    "loggers": {
        "flask_dependency_proxy": {
            "level": "INFO",
            "handlers": ["error_console"],
            "propagate": False,
        },
    },
}


# -- Prometheus metrics from every worker (DEPENDENCY_PROXY_METRICS_ENABLED) -------------
# prometheus_client's multiprocess mode: each worker writes its values to files in
# PROMETHEUS_MULTIPROC_DIR and a scrape adds them up. The folder must exist and be
# empty when the workers start, so it is made here, in the master, before they fork.
# prometheus_client decides once, when it is first imported, whether it writes files:
# the variable must be set before that import, or the workers (which inherit the
# master's modules) keep their values in memory and a scrape finds none.
if importlib.util.find_spec("prometheus_client") is not None and not os.environ.get(
    "PROMETHEUS_MULTIPROC_DIR"
):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dependency-proxy-metrics-")

try:
    from prometheus_client import multiprocess as _multiprocess
except ImportError:  # the metrics extra is not installed
    _multiprocess = None


def child_exit(server, worker):
    """A dead worker's live gauges (fetches in flight) stop counting."""
    if _multiprocess is not None:
        _multiprocess.mark_process_dead(worker.pid)
