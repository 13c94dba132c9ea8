"""DICOM: the storage SCP and its lane, query/retrieve, DICOMweb, the object store and index,
and DICOM to FHIR.

Two pydicom settings for this process, both for accepting associations and reading headers:

- pydicom checks every value it reads against its VR and logs a warning, with the value, for
  one that does not conform: patient data in the log (DESIGN.md rule 6), and a regular
  expression run for each UID. What the gateway relies on it checks itself (``dicom.ingest``'s
  UID checks, pynetdicom's own association checks), so pydicom's reading validation is off.
- ``UID.is_valid`` runs ``re.match`` on its pattern's text (a look-up in ``re``'s cache, then
  the match), and pynetdicom asks it of every UID of an association request and of its answer:
  the same few hundred SOP class and transfer syntax UIDs at every association, a hundred
  contexts for a modality's. The same answer, remembered.
"""

import functools
import re

import pydicom.config
import pydicom.uid

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_VALID_UID = re.compile(pydicom.uid.RE_VALID_UID)


@functools.lru_cache(maxsize=4096)
def _uid_is_valid(value: str) -> bool:
    return len(value) <= 64 and _VALID_UID.match(value) is not None


pydicom.uid.UID.is_valid = property(lambda self: _uid_is_valid(self))  # type: ignore[method-assign,assignment]
