"""Building the project's own models and transcoders (they load like any other model).

- :mod:`circuitray.models.builders.tokenizer`: the word-level tokenizer over the WS2
  vocabulary.
- :mod:`circuitray.models.builders.hooks`: recording a model's MLP inputs and outputs at
  circuit-tracer's hook points (what transcoders are fitted on).
- :mod:`circuitray.models.builders.artifacts`: saving HF model folders and transcoder sets.
- :mod:`circuitray.models.builders.stamp`: build keys and stamps (reuse while code and
  config stand).
- :mod:`circuitray.models.builders.train_transcoders`: per-layer JumpReLU transcoders
  fitted on recorded MLP inputs and outputs (the organism's, the real models').
- :mod:`circuitray.models.builders.clt`: cross-layer transcoders fitted on per-layer
  encoders.
- :mod:`circuitray.models.builders.tiny`: the random-weight tiny Gemma-2 model (plumbing
  tests).
- :mod:`circuitray.models.builders.synthetic`: random-weight models of a real model's
  shape.
- :mod:`circuitray.models.builders.real`: real pretrained models converted here
  (:mod:`~circuitray.models.builders.llama2c`: stories260K;
  :mod:`~circuitray.models.builders.gguf`: Gemma-3-270m), with transcoders trained here.
"""
