"""HTTP surfaces of the extension: registry API, token endpoint, pages, REST API."""
