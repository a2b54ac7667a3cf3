"""PLACEHOLDER — being written; replaced by the float64 reference."""


def pcgrad(J, **options):
    raise NotImplementedError("reference pcgrad is not implemented yet")
