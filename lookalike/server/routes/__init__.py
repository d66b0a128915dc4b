"""The routes, one ``fastapi.APIRouter`` per part of the API (``page``, ``search``, ``collection``, ``ops``);
each reaches the shared state through the dependencies of :mod:`lookalike.server.state`
(``Depends(get_state)``, ``Depends(get_served)``)."""

from . import collection, ops, page, search

ROUTERS = (page.router, search.router, collection.router, ops.router)

__all__ = ["ROUTERS"]
