"""PLACEHOLDER — being written; replaced by the float64 reference."""


def mgda(J, **options):
    raise NotImplementedError("reference mgda is not implemented yet")
