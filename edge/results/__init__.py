"""Clinical results out: DICOM result objects built from an analysis, queued and delivered to the clinic's PACS.

Data flow: an instance the pipeline marked ``analysed`` -> :mod:`~edge.results.sr` (TID 1500 structured report)
and :mod:`~edge.results.overlay` (Secondary Capture with the findings drawn) -> written durably under
``<data_dir>/results`` -> :mod:`~edge.results.queue` (one delivery row per object and destination in ``edge.db``)
-> :mod:`~edge.results.scu` (C-STORE). :mod:`~edge.results.service` runs it; :mod:`~edge.results.destinations`
says who gets what; :mod:`~edge.results.uids` makes the new UIDs.
"""
