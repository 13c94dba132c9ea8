"""DICOM-to-FHIR mappings (ImagingStudy, ECG waveforms)."""
