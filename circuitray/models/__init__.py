"""Models: building the bundled offline models and loading any ReplacementModel.

- :mod:`circuitray.models.registry`: names (``tiny``, ``organism-tuned``...) -> paths.
- :mod:`circuitray.models.tokenizer`: the word-level tokenizer over the WS2 vocabulary.
- :mod:`circuitray.models.artifacts`: saving HF model folders and transcoder sets.
- :mod:`circuitray.models.train_transcoders`: per-layer JumpReLU transcoders fitted on
  recorded MLP inputs and outputs (the organism's, the real models').
- :mod:`circuitray.models.clt`: cross-layer transcoders fitted on per-layer encoders.
- :mod:`circuitray.models.tiny`: the random-weight tiny Gemma-2 model (plumbing tests).
- :mod:`circuitray.models.loading`: ``load_replacement_model``, the one loading path.
"""
