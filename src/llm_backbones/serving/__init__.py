"""Serving a VLA policy over HTTP: `llm-backbones serve PATH`, the client `PolicyClient(url).act(...)`.

`protocol` reads and writes requests (deploy.py's json-numpy form and a `.npy` binary form), `batching`
gathers concurrent requests into one `predict_actions` call on one worker thread, `server` is the FastAPI app
(`create_app`) and `serve` (uvicorn), `client` is the Python client (numpy and the standard library only).
The server's packages are the optional extra `serve`; nothing here imports them on import.
"""
