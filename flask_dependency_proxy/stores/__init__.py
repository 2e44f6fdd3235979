"""The blob-store seam: bytes by digest, staged and committed. :mod:`.base` is the
interface (``BlobStore``, ``BlobLocation``); :mod:`.filesystem` and :mod:`.s3` implement
it; :mod:`.backends` picks one from the configuration. Knows nothing of the database,
upstream or HTTP.
"""
