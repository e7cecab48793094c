"""Video ingest: the ingest service (visionpipe.services.ingest)."""
