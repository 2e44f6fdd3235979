"""Who may pull what: platform credentials to principals (:mod:`.access`), signed
registry tokens (:mod:`.tokens`), limits on password guessing (:mod:`.throttle`) and the
variables CI jobs log in with (:mod:`.ci`). Asks the host adapter; knows no HTTP route.
"""
