"""What the OCI distribution spec and Docker's registry API say, with no I/O: image
references and media types (:mod:`.reference`), the registry error envelope
(:mod:`.errors`) and numbers on the wire (:mod:`.digits`). The bottom layer: it imports
nothing else of the package.
"""
