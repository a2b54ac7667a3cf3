"""PLACEHOLDER — being written; replaced by the float64 reference."""


def imtl(J, **options):
    raise NotImplementedError("reference imtl is not implemented yet")
