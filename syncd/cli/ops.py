"""``syncd doctor`` and ``syncd audit`` (being built: issue 13)."""
