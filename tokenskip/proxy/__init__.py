"""The compressing gateway, in three rooms that import only downward.

- :mod:`tokenskip.proxy.api`: the HTTP face: the app, the edge (body limits, parsing once),
  the routes, the OpenAPI document, and the API translators behind one ``Translator``;
- :mod:`tokenskip.proxy.serving`: a request's plan and its one exchange, the chat service,
  same-protocol pass-through, batching and multi-query, prompt compression, the registry;
- :mod:`tokenskip.proxy.infra`: configuration and policy, backends, accounting, the ledger
  and its backlog, metrics.

Under all three, the wire vocabulary every room speaks: :mod:`~tokenskip.proxy.protocol`
(request models and the bodies the gateway builds), :mod:`~tokenskip.proxy.errors` (each
API's error shapes) and :mod:`~tokenskip.proxy.jsonio` (the hot path's JSON).
``tests/test_layers.py`` holds the order.
"""
