"""lam-stack serving: OpenAI-compatible API over an embedded batching transformers backend (or vLLM).

    python -m serving.server --model MODEL_DIR --port 8000          # foreground server
    from serving.launch import start_server_subprocess              # as a subprocess, e.g. for eval

Submodules are imported on demand so `import serving` stays cheap (no torch, no vllm).
"""
