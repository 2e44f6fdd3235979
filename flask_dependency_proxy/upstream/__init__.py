"""The upstream registries: the HTTP client with its token auth, retries and breaker
(:mod:`.client`), which registry serves a name (:mod:`.routing`), upstream tokens shared
by the workers of a host (:mod:`.token_cache`) and group credentials encrypted at rest
(:mod:`.credentials`). Knows HTTP to a registry; nothing of the database or the store.
"""
