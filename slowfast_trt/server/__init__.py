"""OpenAI-compatible video chat server and web demo over one ``SlowFastRuntime``.

Run ``python -m slowfast_trt.serve --engines DIR`` (needs ``pip install -e ".[server]"``);
embed with ``slowfast_trt.server.app.create_app(runtime, ServerConfig(...))``. Importing
this package loads nothing heavy; FastAPI is imported by ``app`` and the CLI.
"""
