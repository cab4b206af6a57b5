"""The app's cache budget: the studio's caches are `cbam_viz.lru.LRU`s whose entries are weighed in bytes (`nbytes`).

Every cache of the studio is bounded by the bytes its entries hold, a fixed share (`CACHE_SHARES`) of one settable
total (`CACHE_MB`, --cache-mb). Each key is computed by one thread at a time: concurrent requests for the same new
image wait for the first one's forward pass instead of repeating it.
"""

# The memory all of Studio's caches may hold (--cache-mb), and how it is shared between them.
CACHE_MB = 128.0
CACHE_SHARES = {"uploads": 0.3, "answers": 0.35, "heatmaps": 0.3, "masks": 0.05}
