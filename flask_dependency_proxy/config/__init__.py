"""The ``DEPENDENCY_PROXY_*`` configuration keys (:mod:`.keys`: each key once, with its
default, parser and doc comment), the parsers of their values (:mod:`.parsers`, and
:mod:`.upstreams` for the upstream entries) and :class:`ConfigError`. Imports only the
upstream routing rules and the credential keys' format.
"""

from .keys import ENV_PREFIX, ProxyConfig, load_config
from .parsers import ConfigError

__all__ = ["ENV_PREFIX", "ConfigError", "ProxyConfig", "load_config"]
