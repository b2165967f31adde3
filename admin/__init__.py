"""The LAN admin panel (FastAPI): its own process, talking to the engine and the bridge over their sockets.

``doorway admin`` runs it (:mod:`admin.server`): HTTPS with the doorway's own certificate
(:mod:`admin.tls`), plain HTTP only redirecting. :func:`admin.app.create_app` builds the app from the
routers in :mod:`admin.routes` with the dependencies in :mod:`admin.deps`; who may do what is
:mod:`admin.security` over :mod:`admin.store`. The pages and their JSON API (:mod:`admin.routes`: overview,
pairing, lighting, settings, logs, diagnostics, ``/metrics``) read the live samples and history the
:class:`~admin.collector.Collector` keeps (:mod:`admin.history`), drive pairing (:mod:`admin.pairing`) and
edit the settings file (:mod:`admin.settings_file`). The engine never imports this package.
"""
