"""One upstream fetch per blob digest: in a process, across the workers of a host
(:mod:`.fetcher`) and across the hosts of a fleet (:mod:`.leases`, :mod:`.fleet`); every
other client follows the fetch in progress. Knows the store and the upstream client, not
HTTP routes.
"""
