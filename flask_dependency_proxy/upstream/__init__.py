"""The upstream registries: what the cache asks of one (:mod:`.registry`), the HTTP
client that asks it (:mod:`.client`, its requests in :mod:`.transport`), with its errors
(:mod:`.errors`), token auth (:mod:`.bearer`), address rule against internal targets
(:mod:`.address`) and breaker (:mod:`.breaker`); which registry serves a name
(:mod:`.routing`), upstream tokens shared by the workers of a host (:mod:`.token_cache`)
and group credentials encrypted at rest (:mod:`.credentials`). Knows HTTP to a registry;
nothing of the database or the store.
"""
