"""Follow-up: match the lesions of a baseline and a follow-up scan, and judge the response (RECIST 1.1,
volumetric).

A stage: imports only ``medseg.core`` and libraries.
"""
