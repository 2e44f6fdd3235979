"""The pull-through rules (:mod:`.pull_through`): when to ask upstream, what to keep,
what to serve; manifests and tags (:mod:`.manifests`), the upstreams asked for an image
(:mod:`.routes`), a route's word on a blob (:mod:`.confirmations`), what a worker
remembers (:mod:`.worker_memory`) and the answers (:mod:`.results`); the size limits
(:mod:`.quota`), the usage counters (:mod:`.usage`) and filling a cache ahead of a CI
rush (:mod:`.warm`). No Flask request, no SQL, no boto3: records come from
:mod:`..models`, bytes from :mod:`..stores` and :mod:`..fetch`.
"""
