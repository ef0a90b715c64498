"""The OpenAI-compatible routes, one module per endpoint family; serving/openai_server.py mounts their routers.

    python -c "from serving.routes import ROUTERS; print([r.path for router in ROUTERS for r in router.routes])"

Handlers read what the app serves from `request.app.state`: backend, metrics, model_name, api_key, chat.
"""
from __future__ import annotations

from .chat import router as chat_router
from .completions import router as completions_router
from .models import router as models_router
from .weights import router as weights_router

ROUTERS = (models_router, chat_router, completions_router, weights_router)  # in the order the app always listed them
