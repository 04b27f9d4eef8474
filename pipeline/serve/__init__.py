"""``mmx serve``: a local web app and JSON API over a trained run (:mod:`.app`, :mod:`.backend`)."""
