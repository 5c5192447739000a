"""Carriers for TARGET schemes that need one (``ssh://``, ``kube://``): each module
registers an opener in ``prodbug.connect.CARRIERS`` when imported."""
