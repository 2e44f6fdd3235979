"""Use cases that the group pages, the REST API and the CLI share (:mod:`.groups`: a
group's settings, listings, deletion and upstreams), and the life cycle of cached
content (:mod:`.lifecycle`: purge, cleanup policy, deletion of rows and files) with
what the cache saved a group (:mod:`.usage_chart`).
"""
