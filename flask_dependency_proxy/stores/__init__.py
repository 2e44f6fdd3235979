"""The blob-store seam: bytes by digest, staged and committed. :mod:`.base` is the
interface (``BlobStore`` for serving and staging, ``StoreJanitor`` for sweeping,
``BlobLocation``); :mod:`.spool` keeps the host-local spool and lock files every store
stages in; :mod:`.filesystem` and :mod:`.s3` implement both faces; :mod:`.backends`
picks one from the configuration. Knows nothing of the database, upstream or HTTP.
"""
