"""``narecon validate``: the validation family (ranges fixed in :mod:`recon.validate.ranges`)."""

from recon.validate.ranges import FAMILY_VERSION, RANGES, alias_free_radius_m, draw_case

__all__ = ["FAMILY_VERSION", "RANGES", "alias_free_radius_m", "draw_case"]
