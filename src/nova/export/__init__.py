"""Export a merged model for other runtimes: a GGUF file (llama.cpp) or an Ollama model directory.

``gguf_export`` writes the file's tensors with the ``gguf`` package's writer and ``gguf_vocab`` its
tokenizer; ``ollama`` writes a Modelfile whose Go TEMPLATE is derived from, and checked against,
the model's Jinja chat template. Heavy packages are imported inside the functions, so importing
this package is cheap.
"""
