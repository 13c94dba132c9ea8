"""v2-to-FHIR mappings. Each message type has a ``translate(message, context) -> Translation``
that reads segments and builds resources without touching the database; ``adapters.hl7v2.ingest``
then applies the Translation in one unit of work (matching, ids, Provenance, archive, audit)."""
