"""Graphs made elsewhere into run folders: circuit-tracer's (and Neuronpedia's) graph
JSON read and checked (:mod:`circuitray.ingest.graph_json`), then committed as one run
folder's parts (:mod:`circuitray.ingest.importer`). Nothing here imports torch."""
