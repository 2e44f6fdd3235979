"""Real parts for the test suite: processes, registries, images, clients and faults.

Every helper binds to 127.0.0.1, keeps its files in a directory the caller owns and
stops what it starts.
"""
