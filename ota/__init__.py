"""Over-the-air model updates: signed metadata, staged install, health check, automatic rollback."""
