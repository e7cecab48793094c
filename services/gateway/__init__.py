"""The HTTP gateway: images in over HTTP, results back as JSON, with the pipeline's backpressure as 429s.

``visionpipe serve gateway`` runs it as one more service (FastAPI on uvicorn, one process per container, scaled
by replicas). It admits a request only after the same header checks decode applies (so most bad input never
enters the broker), publishes it through the ingress, reads the results stream in a consumer group of its own
and keeps each result in a results store (``store/``) for a TTL, where any replica can find it.
"""
