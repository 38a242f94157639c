"""The dental domain both the pipeline and the model tools speak: teeth, findings and their outlines.

``teeth`` (FDI and Universal tooth numbering), ``findings`` (:class:`~dental.findings.Finding`, one coded
observation on one tooth, and :func:`~dental.findings.box_iou`) and ``outline`` (a region's outline). Pure values
and functions; it imports nothing of ours, so :mod:`models` (bundles, the synthetic generator) and
:mod:`edge.pipeline` (which runs the models) can both use it without importing each other.
"""
