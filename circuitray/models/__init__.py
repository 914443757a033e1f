"""Models: loading any ReplacementModel; :mod:`circuitray.models.builders` builds our own.

Loading (this package) imports nothing from :mod:`circuitray.models.builders`:

- :mod:`circuitray.models.registry`: names (``tiny``, ``organism-tuned``...) -> paths.
- :mod:`circuitray.models.loading`: ``load_replacement_model``, the one loading path.
- :mod:`circuitray.models.warm`: warming a node's model and transcoder caches.

Building the project's own models and transcoders: :mod:`circuitray.models.builders`.
"""
