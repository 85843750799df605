"""`slimtune serve`: an OpenAI-compatible HTTP server over a model folder (ONNX Runtime GenAI or Hugging Face).

`decode.py` steps a model one token at a time (sampling, stop strings, text as it is produced), `protocol.py`
reads and checks request bodies and writes OpenAI's response and error shapes, `admission.py` bounds how many
requests run and wait, `app.py` is the FastAPI application, `server.py` runs it under uvicorn (SIGTERM drains),
`page.html` is the chat page served at `/`.
"""
