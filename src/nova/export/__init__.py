"""Export a merged model for other runtimes: a GGUF file (llama.cpp) or an Ollama model directory.

``gguf_export`` writes the file with the ``gguf`` package's writer; ``ollama`` writes a Modelfile
whose Go TEMPLATE is derived from, and checked against, the model's Jinja chat template. Heavy
packages are imported inside the functions, so importing this package is cheap.
"""
