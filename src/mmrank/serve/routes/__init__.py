"""The HTTP routes, one router per concern: :mod:`.rank`, :mod:`.items` (ingest and item lookups),
:mod:`.search`, :mod:`.health` (health, metrics, the loaded bundle, hot swap) and :mod:`.page`."""
