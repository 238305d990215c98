"""Session apps bundled with coserve; ``coserve serve`` runs ``digits`` with the demo models."""
