"""coserve on other engines: :mod:`coserve.integrations.ray` (Ray Serve; ``coserve[ray]``).

Nothing here is imported by the rest of coserve; each module imports its engine lazily.
"""
