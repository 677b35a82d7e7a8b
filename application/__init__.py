"""Use cases: the one place that combines authorization, the domain, the read model, the
audit log and the session workflows. Endpoints call exactly one of these."""
