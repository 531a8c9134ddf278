"""Server of the orchestrator dashboard: `create_app()` in `backend.app`, `dashboard serve` in `backend.cli`."""
