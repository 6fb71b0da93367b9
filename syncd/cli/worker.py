"""``syncd worker``: a scale-out worker on PostgreSQL (being built: issue 13)."""
