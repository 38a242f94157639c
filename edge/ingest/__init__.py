"""DICOM ingest: the storage SCP (:mod:`edge.ingest.scp`), where it spools incoming objects
(:mod:`edge.ingest.spool`) and its tuned receive path on pynetdicom (:mod:`edge.ingest.transport`)."""
