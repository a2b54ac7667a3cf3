"""PLACEHOLDER — being written; replaced by the float64 reference."""


def nash_mtl(J, **options):
    raise NotImplementedError("reference nash_mtl is not implemented yet")
