"""Registration of a follow-up scan onto a baseline scan of the same patient (``medseg compare``)."""

from medseg.register.rigid_affine import (
    Registration,
    RegistrationError,
    register_volumes,
    resample_volume,
    write_transform,
)

__all__ = ["Registration", "RegistrationError", "register_volumes", "resample_volume", "write_transform"]
